// Chooses the kernel table once, from CPU features (cpuid + xgetbv) and FLASHMTP_ISA.
// Every ISA's table starts from the scalar one, so a type without a SIMD kernel still works.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernel_fill.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define FLASHMTP_X86 1
#endif

namespace flashmtp {

namespace {

#ifdef FLASHMTP_X86
uint64_t read_xcr0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t(edx) << 32) | eax;
}
#endif

bool detect(Isa isa) {
    if (isa == ISA_SCALAR) return true;
#ifdef FLASHMTP_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29), avx = c & (1u << 28);
    if (!(osxsave && avx && fma && f16c)) return false;
    const uint64_t xcr0 = read_xcr0();
    if ((xcr0 & 0x6) != 0x6) return false;  // OS saves XMM and YMM state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool avx2 = b & (1u << 5);
    if (isa == ISA_AVX2) return avx2;
    const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
    const bool vnni = c & (1u << 11);
    const bool os_zmm = (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM_Hi256, Hi16_ZMM
    if (isa == ISA_AVX512) return avx2 && f && dq && bw && vl && vnni && os_zmm;
#endif
    return false;
}

struct Tables {
    KernelTable table[ISA_COUNT];
    bool available[ISA_COUNT] = {};
    Isa chosen = ISA_SCALAR;

    Tables() {
        for (int i = 0; i < ISA_COUNT; ++i) {
            available[i] = detect(Isa(i));
            std::memset(&table[i], 0, sizeof(KernelTable));
            table[i].isa = Isa(i);
            kernel_table_fill_quant_ref(table[i]);
            kernel_table_fill_dot_ref(table[i]);
            kernel_table_fill_dot_kquants_ref(table[i]);
            kernel_table_fill_act_ref(table[i]);
        }
#ifdef FLASHMTP_X86
        kernel_table_fill_avx2(table[ISA_AVX2]);
        kernel_table_fill_avx2_kquants(table[ISA_AVX2]);
        kernel_table_fill_avx2_quant(table[ISA_AVX2]);
        kernel_table_fill_avx2_act(table[ISA_AVX2]);
        // AVX-512 machines have AVX2 too: types without an AVX-512 kernel use the AVX2 one.
        kernel_table_fill_avx2(table[ISA_AVX512]);
        kernel_table_fill_avx2_kquants(table[ISA_AVX512]);
        kernel_table_fill_avx2_quant(table[ISA_AVX512]);
        kernel_table_fill_avx512(table[ISA_AVX512]);
        kernel_table_fill_avx512_kquants(table[ISA_AVX512]);
        kernel_table_fill_avx512_quant(table[ISA_AVX512]);
        kernel_table_fill_avx512_act(table[ISA_AVX512]);
#endif
        for (int i = ISA_COUNT - 1; i >= 0; --i) {
            if (available[i]) { chosen = Isa(i); break; }
        }
        if (const char *forced = std::getenv("FLASHMTP_ISA"); forced && *forced) {
            Isa want = ISA_COUNT;
            for (int i = 0; i < ISA_COUNT; ++i) {
                if (std::strcmp(forced, isa_name(Isa(i))) == 0) want = Isa(i);
            }
            if (want == ISA_COUNT) {
                throw std::invalid_argument(std::string("FLASHMTP_ISA=") + forced +
                                            " is not one of scalar, avx2, avx512");
            }
            if (!available[want]) {
                throw std::invalid_argument(std::string("FLASHMTP_ISA=") + forced + ": this CPU lacks it");
            }
            chosen = want;
        }
    }
};

const Tables &tables() {
    static const Tables t;
    return t;
}

}  // namespace

bool cpu_supports(Isa isa) { return isa >= 0 && isa < ISA_COUNT && tables().available[isa]; }

const KernelTable *kernels_for(Isa isa) {
    if (!cpu_supports(isa)) return nullptr;
    return &tables().table[isa];
}

const KernelTable &kernels() { return tables().table[tables().chosen]; }

}  // namespace flashmtp
