// The Python module of the CPU kernels (`kernels/native_cpu.py`).
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lora_layer", &lora_layer, "LoRA of one layer call: every slot segment of the batch");
  m.def("decode_attention", &decode_attention, "decode rows attending to their paged KV blocks in place");
  m.def("rms_norm", &rms_norm, "RMSNorm of fp32 rows");
  m.def("add_rms_norm", &add_rms_norm, "the residual add, then RMSNorm, of fp32 rows");
  m.def("rotary", &rotary, "RoPE (rotate half) of q and k");
}
