// (in progress) kernels contributed through kernel_table_fill_dot_kquants_ref.
#include "../kernel_fill.h"

namespace flashmtp {

void kernel_table_fill_dot_kquants_ref(KernelTable &table) { (void)table; }

}  // namespace flashmtp
