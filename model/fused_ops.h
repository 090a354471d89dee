#pragma once
// Fused tensor functions with hand-written backward passes, for the places where stock
// libtorch 1.13 (Debian build) is slow at this model's shapes, among them:
//   - softmax cross-entropy over a large candidate set: at::log_softmax is not vectorised in
//     this build (22 ms for 512 x 3706), and nll_loss's backward zero-fills a fresh B x C
//     buffer; SoftmaxLoss avoids both, and at small E never forms the B x C matrix;
//   - swish + LayerNorm over channels + mask, applied after every U-Net convolution: with tiny
//     channel counts (D = 4) at::layer_norm costs ~1.4 ms forward and ~2.5 ms backward per
//     call on 28k rows; plain loops over rows do it in a fraction of that;
//   - attention with a few narrow heads (Attention) and ELU (Elu).
// All are differentiable (torch::autograd::Function) and also run under no-grad/inference.
// Thread-safety: pure functions. Errors: shape mismatches throw c10::Error (caught by the
// model's boundary).

#include <ATen/core/Tensor.h>

namespace t2d::model {

// Mean over rows of -log softmax(logits)[row, labels[row]]. logits [B, C] float, labels [B] int64.
at::Tensor SoftmaxCrossEntropy(const at::Tensor& logits, const at::Tensor& labels);

// The tower loss straight from the vectors: logits = users [B, E] . items [N, E]^T, minus
// `bias` [N] (the logQ correction; undefined: none), with logits where `exclude` [B, N] (bool;
// undefined: none) is true removed from the softmax; mean over rows of the cross-entropy with
// `labels` [B]. For E <= 32 the B x N logits are never formed: rows are done 4 at a time
// against the transposed item matrix held in cache, the loss and both gradients in one pass
// (forward computes the gradient; backward scales it), in 8 fixed row chunks over the intra-op
// threads, so the bits do not depend on the thread count. Wider vectors go through one B x N
// buffer and BLAS (the products are then compute-bound), the item matrix transposed to
// contiguous first (OpenBLAS's NT path with a tiny inner dimension is 25x slower here).
// Backward may run once.
at::Tensor SoftmaxLoss(const at::Tensor& users, const at::Tensor& items, const at::Tensor& labels,
                       const at::Tensor& bias, const at::Tensor& exclude);

// Item embeddings of a list of slots: out[s] = concat(id_rows[id_index[s]], mean of
// tag_rows[tag_index[tag_offsets[s] .. tag_offsets[s + 1])]) (zero when the bag is empty); a slot
// with id_index -1 is padding and gets a zero row (and sends no gradient). tag_rows is 2-D: an
// empty [0, 0] tensor (no tag feature), or [U_tag, D_tag], where U_tag = 0 when no slot has a
// tag (the output still has D_tag columns, zero). Backward scatters into dense row gradients in
// one pass (embedding_bag's backward sorts the indices first, which costs more than the gather).
// Indices must be in range (the model validates batches before calling this).
at::Tensor GatherItems(const at::Tensor& id_rows, const at::Tensor& tag_rows, const at::Tensor& id_index,
                       const at::Tensor& tag_offsets, const at::Tensor& tag_index);

// Kernel-3 "same" convolution columns: cols[b, j] = concat(h[b, j - 1], h[b, j], h[b, j + 1])
// with zeros beyond the sequence ends; h [B, L, C] -> [B, L, 3C]. One pass each way instead of
// pad + three slices + cat (whose backward allocates and zero-fills three padded copies).
at::Tensor Conv3Columns(const at::Tensor& h);

// Max-pool by 2 along the sequence (pairs (2j, 2j + 1); L even), then Conv3Columns:
// h [B, L, C] -> [B, L/2, 3C]. The gradient goes to the larger element of each pair (the first
// on ties, as at::max).
at::Tensor PoolConv3Columns(const at::Tensor& h);

// The U-Net's up-path input, in one op: u[b, j] = concat(low[b, j / 2] * mask[b, j], skip[b, j])
// (nearest upsample of low, masked, next to the skip connection), returned as Conv3Columns(u):
// low [B, L/2, c], skip [B, L, c], mask [B, L] (0/1) -> [B, L, 6c].
at::Tensor UpsampleConcatColumns(const at::Tensor& low, const at::Tensor& skip, const at::Tensor& mask);

// out[r, :] = LayerNorm_c(swish(y[r, :])) * gamma + beta, times mask[r] (0 or 1).
// y [..., C] float (rows = all leading dims), gamma/beta [C], mask with numel = rows.
at::Tensor SwishNormMask(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& mask);

// Multi-head scaled dot-product attention from the packed projections of a Transformer layer:
// qkv [B, t, 3d] holds q, k and v side by side, each split into `heads` heads of d / heads
// columns; bias [B, 1, t, t] (or any shape with B x t x t values) is added to the scores (a large
// negative value forbids a key; every query must allow at least one). Returns the heads'
// outputs concatenated, [B, t, d]: softmax(q_h k_h^T / sqrt(d / heads) + bias) v_h. Scores
// more than 87 below their row's maximum weigh exactly 0. One sample at a time with its t x t
// blocks in L1: the stock path (permute copies, two batched matmuls of 2-wide heads, softmax and
// their backward) costs several times more at the session's t = 11. A sample's result does not
// depend on the other samples or the thread count; no gradient flows to bias.
at::Tensor Attention(const at::Tensor& qkv, const at::Tensor& bias, int64_t heads);

// ELU with alpha 1 (x where x > 0, else exp(x) - 1), vectorised: at::elu takes ~0.35 ms forward
// for the target attention's [512, 40, 16] at one thread. Agrees with at::elu within a few float
// ulp; the result of an element depends on that element only.
at::Tensor Elu(const at::Tensor& x);

// LayerNorm over the last dimension (eps 1e-5) with the same row kernel: at::layer_norm is slow
// for the few channels of this model.
at::Tensor LayerNormLastDim(const at::Tensor& y, const at::Tensor& gamma, const at::Tensor& beta);

}  // namespace t2d::model
