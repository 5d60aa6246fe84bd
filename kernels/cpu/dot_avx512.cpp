// (in progress) kernels contributed through kernel_table_fill_avx512.
#include "../kernel_fill.h"

namespace flashmtp {

void kernel_table_fill_avx512(KernelTable &table) { (void)table; }

}  // namespace flashmtp
