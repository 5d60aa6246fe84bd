#include "layers/norm.h"

#include <cmath>

namespace flashmtp {

void rms_norm(const float *x, const float *weight, int64_t n_rows, int64_t n, float eps, float *out) {
    for (int64_t r = 0; r < n_rows; ++r) {
        const float *xr = x + r * n;
        float *yr = out + r * n;
        // The sum of squares in double, as ggml does: n can be thousands of terms of very different sizes.
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += double(xr[i]) * double(xr[i]);
        const float scale = float(1.0 / std::sqrt(sum / double(n) + double(eps)));
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * weight[i];
    }
}

}  // namespace flashmtp
