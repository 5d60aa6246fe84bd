// Shared by the model loaders: metadata look-ups and the TensorBinder, which hands out checked views of a
// GGUF file's tensors. Every error is a GGUFError naming the file, the key or tensor, and expected vs found.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/gguf.h"
#include "kernels.h"
#include "layers/matmul.h"

namespace flashmtp {

[[noreturn]] inline void fail(const GGUFFile &file, const std::string &problem) {
    throw GGUFError(file.path() + ": " + problem);
}

inline int64_t required_int(const GGUFFile &file, const std::string &key) {
    const int64_t value = file.get(key).to_i64(file.path() + ": " + key);
    if (value <= 0) fail(file, "metadata " + key + " = " + std::to_string(value) + ", expected a positive value");
    return value;
}

inline int64_t optional_int(const GGUFFile &file, const std::string &key, int64_t fallback) {
    return file.has(key) ? required_int(file, key) : fallback;
}

inline float optional_float(const GGUFFile &file, const std::string &key, double fallback) {
    return float(file.has(key) ? file.get(key).to_f64(file.path() + ": " + key) : fallback);
}

inline std::string dims_string(const int64_t *ne, uint32_t n_dims) {
    std::string s = "[";
    for (uint32_t i = 0; i < n_dims; ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

// Hands out checked views of the file's tensors and remembers which ones were taken, so that a tensor the
// architecture does not use (a sign of a wrong or unsupported file) is an error too. Shapes are ggml order.
class TensorBinder {
public:
    explicit TensorBinder(const GGUFFile &file) : file_(file), used_(file.tensors().size(), false) {}

    bool has(const std::string &name) const { return file_.find_tensor(name) != nullptr; }

    // A matrix of n_rows rows of n_cols elements (ggml shape [n_cols, n_rows]) of a type matmul can use.
    WeightMatrix matrix(const std::string &name, int64_t n_cols, int64_t n_rows) {
        return checked_matrix(name, take(name, {n_cols, n_rows}), n_cols, n_rows);
    }

    // n_mat matrices of n_rows rows of n_cols elements stacked in one tensor (ggml [n_cols, n_rows, n_mat]):
    // the view of the first; matrix e starts e * n_rows * row_stride bytes later (MoE expert tensors).
    WeightMatrix matrices(const std::string &name, int64_t n_cols, int64_t n_rows, int64_t n_mat) {
        return checked_matrix(name, take(name, {n_cols, n_rows, n_mat}), n_cols, n_rows);
    }

    // token_embd.weight: n_vocab rows of n_embd, of a type the forward pass can dequantize row by row.
    // n_vocab comes from the embedding itself: the tokenizer's list is checked against it by the tokenizer.
    WeightMatrix token_embedding(int64_t n_embd, int64_t &n_vocab) {
        const GGUFTensorInfo *embd = file_.find_tensor("token_embd.weight");
        if (!embd) fail(file_, "missing tensor 'token_embd.weight'");
        if (embd->n_dims != 2) {
            fail(file_, "tensor 'token_embd.weight': expected 2 dimensions, found " + std::to_string(embd->n_dims));
        }
        n_vocab = embd->ne[1];
        const WeightMatrix w = matrix("token_embd.weight", n_embd, n_vocab);
        if (!kernels().dequantize_row[w.type]) {
            fail(file_, std::string("tensor 'token_embd.weight': type ") + dtype_traits(w.type)->name +
                            " cannot be dequantized");
        }
        return w;
    }

    // An f32 tensor of the given shape (norm weights, biases, small tables).
    const float *f32(const std::string &name, std::initializer_list<int64_t> shape) {
        return static_cast<const float *>(typed(name, shape, DTYPE_F32, "f32"));
    }
    const float *vector_f32(const std::string &name, int64_t n) { return f32(name, {n}); }

    // An i32 tensor of the given shape (index tables).
    const int32_t *i32(const std::string &name, std::initializer_list<int64_t> shape) {
        return static_cast<const int32_t *>(typed(name, shape, DTYPE_I32, "i32"));
    }

    // Marks every tensor whose name starts with `prefix` as accounted for without binding it (a block the
    // model does not run, such as an MTP block carried in the main file).
    void skip_prefix(const std::string &prefix) {
        for (size_t i = 0; i < used_.size(); ++i) {
            if (file_.tensors()[i].name.compare(0, prefix.size(), prefix) == 0) used_[i] = true;
        }
    }

    // Every tensor of the file must have been bound.
    void check_all_used(const char *arch) const {
        for (size_t i = 0; i < used_.size(); ++i) {
            if (!used_[i]) {
                fail(file_, "unexpected tensor '" + file_.tensors()[i].name + "' for architecture " + arch);
            }
        }
    }

private:
    const GGUFTensorInfo &take(const std::string &name, std::initializer_list<int64_t> shape) {
        const GGUFTensorInfo *info = file_.find_tensor(name);
        if (!info) fail(file_, "missing tensor '" + name + "'");
        const std::vector<int64_t> expected(shape);
        bool same = info->n_dims == expected.size();
        for (size_t i = 0; same && i < expected.size(); ++i) same = info->ne[i] == expected[i];
        if (!same) {
            fail(file_, "tensor '" + name + "': expected shape " +
                            dims_string(expected.data(), uint32_t(expected.size())) + ", found " +
                            dims_string(info->ne, info->n_dims) + " (ggml order)");
        }
        used_[size_t(info - file_.tensors().data())] = true;
        return *info;
    }

    WeightMatrix checked_matrix(const std::string &name, const GGUFTensorInfo &info, int64_t n_cols,
                                int64_t n_rows) {
        const DTypeTraits &traits = *dtype_traits(info.type);
        const KernelTable &table = kernels();
        if (!table.vec_dot[info.type] || !table.quantize_row[traits.vec_dot_type]) {
            fail(file_, "tensor '" + name + "': type " + traits.name + " has no matrix multiplication kernel");
        }
        if (n_cols % traits.block_size != 0) {
            fail(file_, "tensor '" + name + "': rows of " + std::to_string(n_cols) + " are not whole " +
                            traits.name + " blocks of " + std::to_string(traits.block_size));
        }
        return {DType(info.type), file_.tensor_data(info).data, n_rows, n_cols, dtype_row_size(traits, n_cols)};
    }

    const void *typed(const std::string &name, std::initializer_list<int64_t> shape, uint32_t type,
                      const char *type_name) {
        const GGUFTensorInfo &info = take(name, shape);
        if (info.type != type) {
            fail(file_, "tensor '" + name + "': expected type " + type_name + ", found " +
                            dtype_traits(info.type)->name);
        }
        return file_.tensor_data(info).data;
    }

    const GGUFFile &file_;
    std::vector<bool> used_;  // [n_tensors of the file]
};

}  // namespace flashmtp
