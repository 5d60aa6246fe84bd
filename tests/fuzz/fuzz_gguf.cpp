// libFuzzer target: any byte string either parses or raises GGUFError. A file that parses is summarised and
// every tensor view is read end to end, so ASan catches a view that strays outside the buffer.
#include <cstddef>
#include <cstdint>

#include "core/gguf.h"
#include "core/gguf_summary.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    try {
        const auto file = flashmtp::GGUFFile::from_memory(data, size, "fuzz.gguf");
        volatile size_t sink = flashmtp::gguf_summary(*file).size();
        for (const flashmtp::GGUFTensorInfo &t : file->tensors()) {
            const flashmtp::GGUFTensorData view = file->tensor_data(t);
            uint8_t acc = 0;
            for (uint64_t i = 0; i < view.n_bytes; ++i) acc ^= view.data[i];
            sink = sink + acc;
        }
        (void)sink;
    } catch (const flashmtp::GGUFError &) {
    }
    return 0;
}
