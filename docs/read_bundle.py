#!/usr/bin/env python3
"""Reads a t2diff serving bundle with numpy (and faiss when installed): docs/serving.md.

usage: python3 docs/read_bundle.py BUNDLE [ITEM_ID]
Prints, as one JSON line, the catalogue's size and width and the 10 items most similar (by inner
product) to ITEM_ID's vector (default: the first item), found by numpy and, when the faiss
module is there, by the bundle's own index.
"""
import json
import sys

import numpy as np

bundle = sys.argv[1]
ids = np.load(bundle + "/item_ids.npy")           # int64 [N]
vectors = np.load(bundle + "/item_vectors.npy")   # float32 [N, E], row i is item ids[i]
offsets = np.load(bundle + "/item_tag_offsets.npy")
tags = np.load(bundle + "/item_tags.npy")         # item i's tags: tags[offsets[i]:offsets[i + 1]]
row = 0 if len(sys.argv) < 3 else int(np.flatnonzero(ids == int(sys.argv[2]))[0])
query = vectors[row:row + 1]

scores = vectors @ query[0]
top = np.argsort(-scores, kind="stable")[:10]
out = {"items": int(len(ids)), "dim": int(vectors.shape[1]), "query_item": int(ids[row]),
       "query_tags": tags[offsets[row]:offsets[row + 1]].tolist(), "numpy_top10": ids[top].tolist()}
try:
    import faiss
    index = faiss.read_index(bundle + "/item_index.faiss")  # exact (flat) or IVF / HNSW, inner product
    _, rows = index.search(query, 10)
    out["faiss_top10"] = ids[rows[0][rows[0] >= 0]].tolist()
except ImportError:
    pass
print(json.dumps(out))
