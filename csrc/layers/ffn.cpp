#include "layers/ffn.h"

#include <cmath>

namespace flashmtp {

void swiglu(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace flashmtp
