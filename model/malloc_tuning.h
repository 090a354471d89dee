#pragma once
// Process-wide glibc malloc settings for processes that run the model.
//
// A training step allocates and frees several multi-megabyte tensors (logits B x C, their
// softmax, activations). glibc serves blocks above its mmap threshold with fresh mmap()s and
// returns freed heap tops to the kernel, so every step page-faults those megabytes in again.
// On the VMs measured here a page fault is expensive enough that this doubled the step time
// of the authors'-size model (bench_model: 100 ms -> 50 ms per step). Raising the mmap and
// trim thresholds keeps freed blocks in the heap for reuse.
//
// Call once, early, from the composition root (launcher main, benchmark and test mains); it is
// not called by the library itself because it changes process-global state.
namespace t2d::model {

// Disables mmap() for allocations (M_MMAP_MAX = 0; the 32 MiB maximum of M_MMAP_THRESHOLD is
// too low for industrial-size activations), disables trimming (M_TRIM_THRESHOLD = -1) and sets
// M_TOP_PAD to 64 MiB. The process then keeps its peak heap size. Returns false if glibc
// rejected a setting.
bool ConfigureMallocForTensors();

}  // namespace t2d::model
