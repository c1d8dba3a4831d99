// The CPU kernels' entry points (`kernels/native_cpu.py` loads them; `bindings.cpp` exports them).
#pragma once
#include <ATen/ATen.h>
#include <vector>

// One layer call's LoRA for every slot segment of the batch (`lora_cpu.cpp`).
void lora_layer(at::Tensor out, at::Tensor x, std::vector<int64_t> lo, std::vector<int64_t> hi,
                std::vector<at::Tensor> a_t, std::vector<at::Tensor> b, std::vector<int64_t> offsets,
                std::vector<double> alphas);

// Decode attention reading the paged KV cache in place (`attention_cpu.cpp`).
void decode_attention(at::Tensor out, at::Tensor q, at::Tensor token_index, at::Tensor k_cache, at::Tensor v_cache,
                      at::Tensor block_tables, at::Tensor context_lens, double scale, int64_t window,
                      double soft_cap);

// RMSNorm of rows, and the residual add before it (`layers_cpu.cpp`).
void rms_norm(at::Tensor out, at::Tensor x, at::Tensor weight, double eps, double offset);
void add_rms_norm(at::Tensor out, at::Tensor total, at::Tensor x, at::Tensor residual, at::Tensor weight, double eps,
                  double offset);

// RoPE of q and k, rotate-half layout, by per-token cos/sin tables (`layers_cpu.cpp`).
void rotary(at::Tensor q_out, at::Tensor k_out, at::Tensor q, at::Tensor k, at::Tensor cos, at::Tensor sin);
