// The GGUF reader: parses and validates a model file (or a split model's parts), maps it read-only and hands
// out zero-copy views of its tensors.
// Owns: the mapping(s), the parsed metadata and tensor table, every validity check on file contents.
// Does not own: what the keys and tensors mean for an architecture (csrc/models checks shapes against those).
//
// Format (little-endian; versions 2 and 3 share one layout, version 1 used 32-bit counts and is refused):
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key, u32 type, value)
//   | n_tensors x (string name, u32 n_dims, u64 dims[n_dims], u32 type, u64 offset)
//   | padding to general.alignment | tensor data (each tensor at data start + offset)
// A string is a u64 byte length and that many UTF-8 bytes (no terminator).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/error.h"
#include "kernels.h"

namespace flashmtp {

// Metadata value types, numbered as in the GGUF specification.
enum GGUFType : uint32_t {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT = 13,
};

// "u32", "string", "array", ...; "?" for ids outside the enum.
const char *gguf_type_name(uint32_t type);
// Bytes of one value of a fixed-size type (every type but string and array), else 0.
size_t gguf_type_size(uint32_t type);

constexpr uint32_t GGUF_DEFAULT_ALIGNMENT = 32;
constexpr uint32_t GGUF_MAX_DIMS = 4;
// Arrays may hold arrays; deeper nesting than this is refused rather than recursed into.
constexpr int GGUF_MAX_ARRAY_DEPTH = 8;
// Arrays inside arrays, counted over a whole file: no real model uses them, and each costs ~10x its size.
constexpr uint64_t GGUF_MAX_NESTED_ARRAYS = 1 << 16;

// One metadata value. Scalars keep their type; arrays keep their element type and either the packed elements
// (numbers and bools, little-endian as in the file), the strings, or the nested arrays.
class GGUFValue {
public:
    GGUFType type = GGUF_TYPE_UINT8;

    bool is_integer() const;  // u8..i64 (not bool)
    bool is_float() const { return type == GGUF_TYPE_FLOAT32 || type == GGUF_TYPE_FLOAT64; }

    // Scalar accessors. They throw GGUFError naming `what` (usually the key) when the value is not of a
    // compatible type: any integer type whose value fits for the integer accessors, f32 or f64 for to_f64.
    uint64_t to_u64(const std::string &what) const;
    int64_t to_i64(const std::string &what) const;
    double to_f64(const std::string &what) const;
    bool to_bool(const std::string &what) const;
    const std::string &to_string(const std::string &what) const;

    // Arrays.
    GGUFType array_type = GGUF_TYPE_UINT8;
    uint64_t array_size = 0;
    const std::vector<uint8_t> &array_bytes() const { return raw_; }           // [array_size * type size]
    const std::vector<std::string> &array_strings() const { return strings_; }  // [array_size] if strings
    const std::vector<GGUFValue> &array_values() const { return values_; }      // [array_size] if arrays
    // Element i of a numeric array widened like the scalar accessors (i < array_size, checked).
    int64_t array_i64(uint64_t i, const std::string &what) const;
    double array_f64(uint64_t i, const std::string &what) const;

private:
    friend class GGUFParser;
    uint64_t bits_ = 0;  // scalars: the value's bytes as read, zero-extended to 64 bits
    std::string str_;
    std::vector<uint8_t> raw_;
    std::vector<std::string> strings_;
    std::vector<GGUFValue> values_;
};

struct GGUFTensorInfo {
    std::string name;
    uint32_t n_dims = 0;
    int64_t ne[GGUF_MAX_DIMS] = {1, 1, 1, 1};  // ggml order: ne[0] is the contiguous dimension; unused = 1
    uint32_t type = 0;                         // DType id (known: dtype_traits(type) != nullptr)
    uint64_t offset = 0;                       // from the start of its part's data section
    int64_t n_elements = 0;
    uint64_t n_bytes = 0;
    uint32_t part = 0;                         // index of the split part holding the data (0 if not split)
    uint64_t file_offset = 0;                  // absolute offset of the data in that part
};

// Bytes of one tensor, valid while the GGUFFile that returned it lives.
struct GGUFTensorData {
    const uint8_t *data;
    uint64_t n_bytes;
};

class GGUFFile {
public:
    // Maps and validates `path`. The first part of a split model (NAME-00001-of-0000N.gguf) opens every part.
    static std::shared_ptr<GGUFFile> open(const std::string &path);
    // Parses a copy of bytes[0, size) as one unsplit file; `name` stands for the file in error messages.
    static std::shared_ptr<GGUFFile> from_memory(const void *bytes, size_t size,
                                                 const std::string &name = "<memory>");

    GGUFFile(const GGUFFile &) = delete;
    GGUFFile &operator=(const GGUFFile &) = delete;
    ~GGUFFile();

    const std::string &path() const { return path_; }     // the first part's path
    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    size_t n_parts() const { return parts_.size(); }
    const std::string &part_path(size_t i) const { return parts_.at(i).path; }
    uint64_t file_size() const;                           // all parts together

    // Metadata of the first part, in file order (later parts of a split carry only the split.* keys).
    const std::vector<std::pair<std::string, GGUFValue>> &metadata() const { return kv_; }
    const GGUFValue *find(const std::string &key) const;  // nullptr if absent
    bool has(const std::string &key) const { return find(key) != nullptr; }
    // Typed look-ups: throw GGUFError naming the file and key if the key is absent or of another type.
    const GGUFValue &get(const std::string &key) const;
    uint32_t get_u32(const std::string &key) const;
    int32_t get_i32(const std::string &key) const;
    uint64_t get_u64(const std::string &key) const;
    float get_f32(const std::string &key) const;
    bool get_bool(const std::string &key) const;
    const std::string &get_string(const std::string &key) const;
    const GGUFValue &get_array(const std::string &key, GGUFType element_type) const;

    // Tensors of all parts, each part's in file order.
    const std::vector<GGUFTensorInfo> &tensors() const { return tensors_; }
    const GGUFTensorInfo *find_tensor(const std::string &name) const;  // nullptr if absent
    const GGUFTensorInfo &tensor(const std::string &name) const;       // throws GGUFError if absent
    GGUFTensorData tensor_data(const GGUFTensorInfo &info) const;

private:
    struct Part {
        std::string path;
        const uint8_t *data = nullptr;  // [size] bytes: the mapping, or owned_ for from_memory
        uint64_t size = 0;
        void *mapping = nullptr;        // non-null when mmap owns data
        std::vector<uint8_t> owned;
    };
    GGUFFile() = default;
    static void map_part(Part &part);
    void parse_part(size_t part_index, bool first);
    void open_split_parts();
    [[noreturn]] void fail_key(const std::string &key, const std::string &problem) const;

    std::string path_;
    uint32_t version_ = 0;
    uint32_t alignment_ = GGUF_DEFAULT_ALIGNMENT;
    std::vector<Part> parts_;
    std::vector<std::pair<std::string, GGUFValue>> kv_;
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<GGUFTensorInfo> tensors_;
    std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace flashmtp
