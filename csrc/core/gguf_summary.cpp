// The `info` summary. Sections follow llama.cpp's load summary (format, hyperparameters, tensor types, size,
// tokenizer); every key is shown once, either in its section or under "other metadata".
#include "core/gguf_summary.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

namespace flashmtp {

namespace {

std::string printf_string(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string printf_string(const char *fmt, ...) {
    char buf[256];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, args);
    va_end(args);
    return buf;
}

// Printable ASCII as is, everything else escaped, so a hostile string cannot garble a terminal.
std::string escape(const std::string &s, size_t max_chars) {
    std::string out;
    for (unsigned char c : s) {
        if (out.size() >= max_chars) return out + "...";
        if (c == '"' || c == '\\') {
            out += '\\';
            out += char(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c >= 0x20 && c < 0x7f) {
            out += char(c);
        } else if (c >= 0x80) {
            out += char(c);  // UTF-8 bytes pass through; control bytes do not
        } else {
            out += printf_string("\\x%02x", c);
        }
    }
    return out;
}

std::string format_element(const GGUFValue &array, uint64_t i) {
    const std::string what = "array";
    switch (array.array_type) {
        case GGUF_TYPE_BOOL: return array.array_bytes()[i] ? "true" : "false";
        case GGUF_TYPE_FLOAT32:
        case GGUF_TYPE_FLOAT64: return printf_string("%g", array.array_f64(i, what));
        case GGUF_TYPE_UINT64: {
            uint64_t v;
            std::memcpy(&v, array.array_bytes().data() + i * 8, 8);
            return std::to_string(v);
        }
        default: return std::to_string(array.array_i64(i, what));
    }
}

// general.file_type: llama.cpp's llama_ftype, the type most tensors were quantized to.
const char *file_type_name(uint64_t ftype) {
    static const char *const names[] = {
        "F32",    "F16",     "Q4_0",   "Q4_1",    nullptr,  nullptr,  nullptr,   "Q8_0",   "Q5_0",  "Q5_1",
        "Q2_K",   "Q3_K_S",  "Q3_K_M", "Q3_K_L",  "Q4_K_S", "Q4_K_M", "Q5_K_S",  "Q5_K_M", "Q6_K",  "IQ2_XXS",
        "IQ2_XS", "Q2_K_S",  "IQ3_XS", "IQ3_XXS", "IQ1_S",  "IQ4_NL", "IQ3_S",   "IQ3_M",  "IQ2_S", "IQ2_M",
        "IQ4_XS", "IQ1_M",   "BF16",   nullptr,   nullptr,  nullptr,  "TQ1_0",   "TQ2_0",  "MXFP4_MOE",
    };
    return ftype < sizeof names / sizeof names[0] ? names[ftype] : nullptr;
}

}  // namespace

std::string format_count(uint64_t n) {
    static const char *const units[] = {"K", "M", "B", "T"};
    if (n < 1000) return std::to_string(n);
    double x = double(n) / 1000;
    int unit = 0;
    while (x >= 1000 && unit < 3) {
        x /= 1000;
        ++unit;
    }
    return printf_string("%.1f %s", x, units[unit]);
}

std::string format_bytes(uint64_t n) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double x = double(n);
    int unit = 0;
    while (x >= 1024 && unit < 4) {
        x /= 1024;
        ++unit;
    }
    return unit == 0 ? std::to_string(n) + " B" : printf_string("%.2f %s", x, units[unit]);
}

std::string gguf_format_value(const GGUFValue &v, size_t max_chars) {
    const std::string what = "value";
    switch (v.type) {
        case GGUF_TYPE_BOOL: return v.to_bool(what) ? "true" : "false";
        case GGUF_TYPE_FLOAT32:
        case GGUF_TYPE_FLOAT64: return printf_string("%g", v.to_f64(what));
        case GGUF_TYPE_STRING: return "\"" + escape(v.to_string(what), max_chars) + "\"";
        case GGUF_TYPE_ARRAY: break;
        default: return v.type == GGUF_TYPE_UINT64 ? std::to_string(v.to_u64(what)) : std::to_string(v.to_i64(what));
    }
    std::string out = printf_string("[%s x %" PRIu64 "]", gguf_type_name(v.array_type), v.array_size);
    for (uint64_t i = 0; i < v.array_size; ++i) {
        if (out.size() >= max_chars) return out + " ...";
        std::string element;
        if (v.array_type == GGUF_TYPE_STRING) {
            element = "\"" + escape(v.array_strings()[i], 24) + "\"";
        } else if (v.array_type == GGUF_TYPE_ARRAY) {
            element = "{" + gguf_format_value(v.array_values()[i], 24) + "}";
        } else {
            element = format_element(v, i);
        }
        out += (i == 0 ? " " : ", ") + element;
    }
    return out;
}

std::string gguf_summary(const GGUFFile &file) {
    std::string out;
    std::set<std::string> shown;
    auto line = [&](const std::string &label, const std::string &value) {
        out += printf_string("%-18s", (label + ":").c_str()) + value + "\n";
    };
    auto key_line = [&](const std::string &key, const std::string &label) {
        const GGUFValue *v = file.find(key);
        if (!v) return;
        out += printf_string("  %-34s = ", escape(label, 34).c_str()) + gguf_format_value(*v) + "\n";
        shown.insert(key);
    };

    line("file", file.path());
    if (file.n_parts() > 1) line("parts", std::to_string(file.n_parts()) + " (split model)");
    line("format", "GGUF v" + std::to_string(file.version()) + ", alignment " + std::to_string(file.alignment()));
    line("file size", format_bytes(file.file_size()) + " (" + std::to_string(file.file_size()) + " bytes)");
    shown.insert("general.alignment");

    std::string arch;
    if (const GGUFValue *v = file.find("general.architecture"); v && v->type == GGUF_TYPE_STRING) {
        arch = v->to_string("general.architecture");
    }
    line("architecture", arch.empty() ? "(none)" : "\"" + escape(arch, 64) + "\"");
    shown.insert("general.architecture");
    if (const GGUFValue *v = file.find("general.name")) {
        line("name", gguf_format_value(*v));
        shown.insert("general.name");
    }
    if (const GGUFValue *v = file.find("general.file_type"); v && v->is_integer()) {
        const char *key = "general.file_type";  // any integer type; values past INT64_MAX are clamped
        const int64_t ftype = v->type == GGUF_TYPE_UINT64 ? int64_t(std::min<uint64_t>(v->to_u64(key), INT64_MAX))
                                                          : v->to_i64(key);
        const char *name = ftype >= 0 ? file_type_name(uint64_t(ftype)) : nullptr;
        line("file type", name ? std::string(name) + " (" + std::to_string(ftype) + ")" : std::to_string(ftype));
        shown.insert("general.file_type");
    }

    // Hyperparameters: every key under the architecture's prefix, in file order.
    if (!arch.empty()) {
        const std::string prefix = arch + ".";
        bool any = false;
        for (const auto &kv : file.metadata()) {
            if (kv.first.compare(0, prefix.size(), prefix) != 0) continue;
            if (!any) out += "hyperparameters:\n";
            any = true;
            key_line(kv.first, kv.first.substr(prefix.size()));
        }
    }

    // Tensors by type: count and bytes; parameters and bits per weight over all tensors.
    struct TypeTotal { uint64_t count = 0, bytes = 0, elements = 0; };
    std::map<uint32_t, TypeTotal> by_type;
    uint64_t n_params = 0, n_bytes = 0;
    for (const GGUFTensorInfo &t : file.tensors()) {
        TypeTotal &total = by_type[t.type];
        total.count += 1;
        total.bytes += t.n_bytes;
        total.elements += uint64_t(t.n_elements);
        n_params += uint64_t(t.n_elements);
        n_bytes += t.n_bytes;
    }
    line("tensors", std::to_string(file.tensors().size()));
    if (!by_type.empty()) out += "  type    count          bytes   share\n";
    for (const auto &entry : by_type) {
        const DTypeTraits *traits = dtype_traits(entry.first);
        out += printf_string("  %-6s %6" PRIu64 " %14s  %5.1f%%\n", traits ? traits->name : "?",
                             entry.second.count, format_bytes(entry.second.bytes).c_str(),
                             n_bytes ? 100.0 * double(entry.second.bytes) / double(n_bytes) : 0.0);
    }
    line("parameters", n_params < 1000 ? format_count(n_params)
                                       : format_count(n_params) + " (" + std::to_string(n_params) + ")");
    line("bits per weight", n_params ? printf_string("%.2f", 8.0 * double(n_bytes) / double(n_params)) : "-");

    // Tokenizer: kind, vocabulary and merge counts, special tokens (id and text).
    if (const GGUFValue *model = file.find("tokenizer.ggml.model")) {
        std::string kind = gguf_format_value(*model);
        if (const GGUFValue *pre = file.find("tokenizer.ggml.pre")) kind += ", pre " + gguf_format_value(*pre);
        line("tokenizer", kind);
        shown.insert({"tokenizer.ggml.model", "tokenizer.ggml.pre"});
    } else {
        line("tokenizer", "none (no tokenizer.ggml.model)");
    }
    const GGUFValue *tokens = file.find("tokenizer.ggml.tokens");
    const bool have_tokens = tokens && tokens->type == GGUF_TYPE_ARRAY && tokens->array_type == GGUF_TYPE_STRING;
    for (const char *key : {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                            "tokenizer.ggml.scores"}) {
        const GGUFValue *v = file.find(key);
        if (!v || v->type != GGUF_TYPE_ARRAY) continue;
        out += printf_string("  %-34s = %" PRIu64 " entries (%s)\n", key + 15, v->array_size,
                             gguf_type_name(v->array_type));
        shown.insert(key);
    }
    for (const auto &kv : file.metadata()) {
        const std::string &key = kv.first;
        const size_t n = key.size();
        if (key.compare(0, 15, "tokenizer.ggml.") != 0 || n < 9 || key.compare(n - 9, 9, "_token_id") != 0) continue;
        std::string value = gguf_format_value(kv.second);
        if (have_tokens && kv.second.is_integer()) {
            const int64_t id = kv.second.to_i64(key);
            if (id >= 0 && uint64_t(id) < tokens->array_size) {
                value += " \"" + escape(tokens->array_strings()[size_t(id)], 32) + "\"";
            }
        }
        out += printf_string("  %-34s = ", key.substr(15).c_str()) + value + "\n";
        shown.insert(key);
    }
    if (const GGUFValue *t = file.find("tokenizer.chat_template"); t && t->type == GGUF_TYPE_STRING) {
        line("chat template", "yes (" + std::to_string(t->to_string("tokenizer.chat_template").size()) + " chars)");
        shown.insert("tokenizer.chat_template");
    } else {
        line("chat template", "no");
    }

    bool any_other = false;
    for (const auto &kv : file.metadata()) {
        if (shown.count(kv.first)) continue;
        if (!any_other) out += "other metadata:\n";
        any_other = true;
        out += printf_string("  %-34s = ", escape(kv.first, 34).c_str()) + gguf_format_value(kv.second) + "\n";
    }
    return out;
}

}  // namespace flashmtp
