// The Python module of the CPU kernels (`kernels/native_cpu.py`).
#include <torch/extension.h>

#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lora_layer", &lora_layer, "LoRA of one layer call: every slot segment of the batch");
  m.def("decode_attention", &decode_attention, "decode rows attending to their paged KV blocks in place");
}
