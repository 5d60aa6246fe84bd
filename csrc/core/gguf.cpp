// GGUF parsing and validation. Every count, length and offset read from a file is untrusted: each is checked
// against the bytes that remain before anything is allocated or indexed, with overflow-safe arithmetic, so a
// malformed file gives a GGUFError that names the file, the key or tensor, and what was expected.
#include "core/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>

namespace flashmtp {

namespace {

constexpr uint32_t GGUF_MAGIC = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t MIN_KV_BYTES = 8 + 4 + 1;                // empty key, type, one-byte value
constexpr uint64_t MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8;  // empty name, n_dims, one dim, type, offset

std::string quoted(const std::string &s) { return "'" + s + "'"; }

bool add_overflows(uint64_t a, uint64_t b, uint64_t *sum) { return __builtin_add_overflow(a, b, sum); }
bool mul_overflows(uint64_t a, uint64_t b, uint64_t *product) { return __builtin_mul_overflow(a, b, product); }

template <typename T>
T load_le(const uint8_t *p) {
    T v;
    std::memcpy(&v, p, sizeof(T));  // hosts are little-endian (x86, ARM64), as the files are
    return v;
}

}  // namespace

const char *gguf_type_name(uint32_t type) {
    static const char *const names[GGUF_TYPE_COUNT] = {"u8",  "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                       "bool", "string", "array", "u64", "i64", "f64"};
    return type < GGUF_TYPE_COUNT ? names[type] : "?";
}

size_t gguf_type_size(uint32_t type) {
    switch (type) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_BOOL: return 1;
        case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16: return 2;
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_FLOAT32: return 4;
        case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64: case GGUF_TYPE_FLOAT64: return 8;
        default: return 0;
    }
}

// ---- values ---------------------------------------------------------------------------------------------------

namespace {

bool is_signed_integer(uint32_t t) {
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 || t == GGUF_TYPE_INT64;
}

// A fixed-size value's bytes (zero-extended into `bits`) as a signed value if its type is signed.
int64_t sign_extend(uint32_t type, uint64_t bits) {
    switch (type) {
        case GGUF_TYPE_INT8: return int8_t(bits);
        case GGUF_TYPE_INT16: return int16_t(bits);
        case GGUF_TYPE_INT32: return int32_t(bits);
        default: return int64_t(bits);
    }
}

uint64_t load_bits(const uint8_t *p, size_t size) {
    uint64_t bits = 0;
    std::memcpy(&bits, p, size);
    return bits;
}

double float_from_bits(uint32_t type, uint64_t bits) {
    if (type == GGUF_TYPE_FLOAT32) {
        float f;
        uint32_t b = uint32_t(bits);
        std::memcpy(&f, &b, 4);
        return f;
    }
    double d;
    std::memcpy(&d, &bits, 8);
    return d;
}

std::string describe_integer(uint32_t type, uint64_t bits) {
    return is_signed_integer(type) ? std::to_string(sign_extend(type, bits)) : std::to_string(bits);
}

[[noreturn]] void fail_type(const std::string &what, const char *expected, uint32_t found) {
    throw GGUFError(what + ": expected " + expected + ", found " + gguf_type_name(found));
}

}  // namespace

bool GGUFValue::is_integer() const {
    return type <= GGUF_TYPE_INT32 || type == GGUF_TYPE_UINT64 || type == GGUF_TYPE_INT64;
}

uint64_t GGUFValue::to_u64(const std::string &what) const {
    if (!is_integer()) fail_type(what, "an integer", type);
    if (is_signed_integer(type) && sign_extend(type, bits_) < 0) {
        throw GGUFError(what + ": expected a non-negative integer, found " + describe_integer(type, bits_));
    }
    return bits_;
}

int64_t GGUFValue::to_i64(const std::string &what) const {
    if (!is_integer()) fail_type(what, "an integer", type);
    if (type == GGUF_TYPE_UINT64 && bits_ > uint64_t(std::numeric_limits<int64_t>::max())) {
        throw GGUFError(what + ": expected an integer below 2^63, found " + std::to_string(bits_));
    }
    return sign_extend(type, bits_);
}

double GGUFValue::to_f64(const std::string &what) const {
    if (!is_float()) fail_type(what, "f32 or f64", type);
    return float_from_bits(type, bits_);
}

bool GGUFValue::to_bool(const std::string &what) const {
    if (type != GGUF_TYPE_BOOL) fail_type(what, "bool", type);
    return bits_ != 0;
}

const std::string &GGUFValue::to_string(const std::string &what) const {
    if (type != GGUF_TYPE_STRING) fail_type(what, "string", type);
    return str_;
}

int64_t GGUFValue::array_i64(uint64_t i, const std::string &what) const {
    if (type != GGUF_TYPE_ARRAY) fail_type(what, "array", type);
    GGUFValue element;
    element.type = array_type;
    const size_t size = gguf_type_size(array_type);
    if (size == 0 || i >= array_size) {
        throw GGUFError(what + ": no integer element " + std::to_string(i) + " in an array of " +
                        std::to_string(array_size) + " " + gguf_type_name(array_type));
    }
    element.bits_ = load_bits(raw_.data() + i * size, size);
    return element.to_i64(what + "[" + std::to_string(i) + "]");
}

double GGUFValue::array_f64(uint64_t i, const std::string &what) const {
    if (type != GGUF_TYPE_ARRAY) fail_type(what, "array", type);
    const size_t size = gguf_type_size(array_type);
    if (size == 0 || i >= array_size) {
        throw GGUFError(what + ": no numeric element " + std::to_string(i) + " in an array of " +
                        std::to_string(array_size) + " " + gguf_type_name(array_type));
    }
    const uint64_t bits = load_bits(raw_.data() + i * size, size);
    if (array_type == GGUF_TYPE_FLOAT32 || array_type == GGUF_TYPE_FLOAT64) return float_from_bits(array_type, bits);
    if (array_type == GGUF_TYPE_BOOL) fail_type(what, "a numeric array", GGUF_TYPE_BOOL);
    return is_signed_integer(array_type) ? double(sign_extend(array_type, bits)) : double(bits);
}

// ---- parser -----------------------------------------------------------------------------------------------------

struct ParsedPart {
    uint32_t version = 0;
    uint32_t alignment = GGUF_DEFAULT_ALIGNMENT;
    std::vector<std::pair<std::string, GGUFValue>> kv;
    std::unordered_map<std::string, size_t> kv_index;
    std::vector<GGUFTensorInfo> tensors;
};

// Reads one file image front to back. Every read checks the bytes left first; errors name `path_` and the
// byte offset at which the problem was found.
class GGUFParser {
public:
    GGUFParser(const std::string &path, const uint8_t *data, uint64_t size) : path_(path), data_(data), size_(size) {}

    ParsedPart parse(uint32_t part_index) {
        ParsedPart out;
        read_header(out);
        const uint64_t n_tensors = read_u64("tensor count");
        const uint64_t n_kv = read_u64("metadata key-value count");
        // Each entry takes some minimum number of bytes, so the counts are bounded by what is left.
        if (n_kv > remaining() / MIN_KV_BYTES) {
            fail_at("metadata key-value count " + std::to_string(n_kv) + " cannot fit in the " +
                    std::to_string(remaining()) + " bytes left");
        }
        out.kv.reserve(size_t(n_kv));
        for (uint64_t i = 0; i < n_kv; ++i) read_kv(out);
        read_alignment(out);

        if (n_tensors > remaining() / MIN_TENSOR_INFO_BYTES) {
            fail_at("tensor count " + std::to_string(n_tensors) + " cannot fit in the " +
                    std::to_string(remaining()) + " bytes left");
        }
        out.tensors.reserve(size_t(n_tensors));
        for (uint64_t i = 0; i < n_tensors; ++i) out.tensors.push_back(read_tensor_info(part_index, out));
        place_tensors(out);
        return out;
    }

private:
    [[noreturn]] void fail(const std::string &problem) const { throw GGUFError(path_ + ": " + problem); }
    [[noreturn]] void fail_at(const std::string &problem) const {
        fail(problem + " (at byte " + std::to_string(pos_) + " of " + std::to_string(size_) + ")");
    }

    uint64_t remaining() const { return size_ - pos_; }

    const uint8_t *take(uint64_t n, const char *what) {
        if (n > remaining()) {
            fail_at(std::string("file ends inside ") + what + ": needs " + std::to_string(n) + " bytes, " +
                    std::to_string(remaining()) + " left");
        }
        const uint8_t *p = data_ + pos_;
        pos_ += n;
        return p;
    }
    uint32_t read_u32(const char *what) { return load_le<uint32_t>(take(4, what)); }
    uint64_t read_u64(const char *what) { return load_le<uint64_t>(take(8, what)); }

    std::string read_string(const char *what) {
        const uint64_t n = read_u64(what);
        if (n > remaining()) {
            fail_at(std::string(what) + " length " + std::to_string(n) + " exceeds the " +
                    std::to_string(remaining()) + " bytes left");
        }
        const uint8_t *p = take(n, what);
        return std::string(reinterpret_cast<const char *>(p), size_t(n));
    }

    void read_header(ParsedPart &out) {
        if (size_ < 4 || load_le<uint32_t>(data_) != GGUF_MAGIC) {
            fail("not a GGUF file (expected magic \"GGUF\" at byte 0)");
        }
        pos_ = 4;
        const uint32_t version = read_u32("version");
        if (version == 1) fail("GGUF version 1 (32-bit counts) is not supported; expected version 2 or 3");
        // A big-endian file stores its version byte-swapped.
        if (version == 0x02000000 || version == 0x03000000) fail("big-endian GGUF files are not supported");
        if (version != 2 && version != 3) {
            fail("unsupported GGUF version " + std::to_string(version) + "; expected 2 or 3");
        }
        out.version = version;
    }

    void read_kv(ParsedPart &out) {
        std::string key = read_string("metadata key");
        const std::string what = "key " + quoted(key);
        if (out.kv_index.count(key)) fail_at("duplicate metadata " + what);
        GGUFValue value;
        read_value(value, read_u32((what + " value type").c_str()), 0, what);
        out.kv_index.emplace(key, out.kv.size());
        out.kv.emplace_back(std::move(key), std::move(value));
    }

    void read_value(GGUFValue &v, uint32_t type, int depth, const std::string &what) {
        if (type >= GGUF_TYPE_COUNT) fail_at(what + ": unknown value type id " + std::to_string(type));
        v.type = GGUFType(type);
        if (const size_t size = gguf_type_size(type)) {
            v.bits_ = load_bits(take(size, what.c_str()), size);
        } else if (type == GGUF_TYPE_STRING) {
            v.str_ = read_string(what.c_str());
        } else {
            read_array(v, depth, what);
        }
    }

    void read_array(GGUFValue &v, int depth, const std::string &what) {
        if (depth >= GGUF_MAX_ARRAY_DEPTH) {
            fail_at(what + ": arrays nested deeper than " + std::to_string(GGUF_MAX_ARRAY_DEPTH) + " levels");
        }
        const uint32_t element_type = read_u32((what + " array element type").c_str());
        if (element_type >= GGUF_TYPE_COUNT) {
            fail_at(what + ": unknown array element type id " + std::to_string(element_type));
        }
        const uint64_t n = read_u64((what + " array length").c_str());
        // Smallest encoding of one element: its fixed size, a string's length field, a nested array's header.
        const uint64_t min_element_bytes = element_type == GGUF_TYPE_STRING  ? 8
                                           : element_type == GGUF_TYPE_ARRAY ? 12
                                                                             : gguf_type_size(element_type);
        if (n > remaining() / min_element_bytes) {
            fail_at(what + ": array of " + std::to_string(n) + " " + gguf_type_name(element_type) +
                    " cannot fit in the " + std::to_string(remaining()) + " bytes left");
        }
        v.array_type = GGUFType(element_type);
        v.array_size = n;
        if (element_type == GGUF_TYPE_STRING) {
            v.strings_.reserve(size_t(n));
            for (uint64_t i = 0; i < n; ++i) v.strings_.push_back(read_string(what.c_str()));
        } else if (element_type == GGUF_TYPE_ARRAY) {
            // A nested array costs far more in memory than its 12 header bytes in the file; cap the total so a
            // hostile file cannot make the reader allocate many times its size (llama.cpp refuses them outright).
            if (n > GGUF_MAX_NESTED_ARRAYS - nested_arrays_) {
                fail_at(what + ": more than " + std::to_string(GGUF_MAX_NESTED_ARRAYS) +
                        " nested arrays in one file");
            }
            nested_arrays_ += n;
            v.values_.resize(size_t(n));
            for (uint64_t i = 0; i < n; ++i) {
                read_value(v.values_[i], GGUF_TYPE_ARRAY, depth + 1, what + "[" + std::to_string(i) + "]");
            }
        } else {
            const uint64_t n_bytes = n * min_element_bytes;  // cannot overflow: bounded by remaining() above
            const uint8_t *p = take(n_bytes, what.c_str());
            v.raw_.assign(p, p + n_bytes);
        }
    }

    void read_alignment(ParsedPart &out) {
        const auto it = out.kv_index.find("general.alignment");
        if (it == out.kv_index.end()) return;
        const GGUFValue &v = out.kv[it->second].second;
        if (v.type != GGUF_TYPE_UINT32) {
            fail(std::string("key 'general.alignment': expected u32, found ") + gguf_type_name(v.type));
        }
        const uint32_t alignment = uint32_t(v.bits_);
        // The GGUF spec asks for a multiple of 8; it also keeps every tensor's blocks aligned for their fields.
        if (alignment < 8 || (alignment & (alignment - 1)) != 0) {
            fail("key 'general.alignment': expected a power of two >= 8, found " + std::to_string(alignment));
        }
        out.alignment = alignment;
    }

    GGUFTensorInfo read_tensor_info(uint32_t part_index, const ParsedPart &out) {
        GGUFTensorInfo t;
        t.part = part_index;
        t.name = read_string("tensor name");
        const std::string what = "tensor " + quoted(t.name);
        t.n_dims = read_u32((what + " dimension count").c_str());
        if (t.n_dims == 0 || t.n_dims > GGUF_MAX_DIMS) {
            fail_at(what + ": " + std::to_string(t.n_dims) + " dimensions; expected 1 to " +
                    std::to_string(GGUF_MAX_DIMS));
        }
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            const uint64_t ne = read_u64((what + " dimensions").c_str());
            if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max())) {
                fail_at(what + ": dimension " + std::to_string(d) + " is " + std::to_string(int64_t(ne)) +
                        "; expected at least 1");
            }
            t.ne[d] = int64_t(ne);
        }
        t.type = read_u32((what + " type").c_str());
        const DTypeTraits *traits = dtype_traits(t.type);
        if (!traits || traits->is_internal) {  // internal: our activation formats, never a file's
            fail_at(what + ": unknown or unsupported tensor type id " + std::to_string(t.type));
        }
        t.offset = read_u64((what + " offset").c_str());

        if (t.ne[0] % traits->block_size != 0) {
            fail(what + ": first dimension " + std::to_string(t.ne[0]) + " is not a multiple of the " +
                 traits->name + " block size " + std::to_string(traits->block_size));
        }
        uint64_t n_elements = 1;
        for (uint32_t d = 0; d < t.n_dims; ++d) {
            if (mul_overflows(n_elements, uint64_t(t.ne[d]), &n_elements) ||
                n_elements > uint64_t(std::numeric_limits<int64_t>::max())) {
                fail(what + ": element count overflows 64 bits");
            }
        }
        t.n_elements = int64_t(n_elements);
        if (mul_overflows(n_elements / uint64_t(traits->block_size), traits->type_size, &t.n_bytes)) {
            fail(what + ": byte size overflows 64 bits");
        }
        if (t.offset % out.alignment != 0) {
            fail(what + ": data offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
                 std::to_string(out.alignment));
        }
        return t;
    }

    // The data section starts at the first aligned byte after the tensor infos. Each tensor must lie inside
    // the file, and no two may share bytes (a writer bug that would alias weights).
    void place_tensors(ParsedPart &out) {
        const uint64_t a = out.alignment;
        uint64_t data_start;
        if (add_overflows(pos_, a - 1, &data_start)) fail("data section start overflows");
        data_start -= data_start % a;
        for (GGUFTensorInfo &t : out.tensors) {
            uint64_t end;
            if (add_overflows(data_start, t.offset, &t.file_offset) || add_overflows(t.file_offset, t.n_bytes, &end) ||
                end > size_) {
                fail("tensor " + quoted(t.name) + ": data at offset " + std::to_string(t.offset) + " (+" +
                     std::to_string(data_start) + " data start), " + std::to_string(t.n_bytes) +
                     " bytes, ends past the end of the file (" + std::to_string(size_) + " bytes)");
            }
        }
        std::vector<const GGUFTensorInfo *> by_offset;
        by_offset.reserve(out.tensors.size());
        for (const GGUFTensorInfo &t : out.tensors) by_offset.push_back(&t);
        std::sort(by_offset.begin(), by_offset.end(),
                  [](const GGUFTensorInfo *x, const GGUFTensorInfo *y) { return x->offset < y->offset; });
        for (size_t i = 1; i < by_offset.size(); ++i) {
            const GGUFTensorInfo &prev = *by_offset[i - 1], &next = *by_offset[i];
            if (prev.offset + prev.n_bytes > next.offset) {
                fail("tensor " + quoted(next.name) + " (offset " + std::to_string(next.offset) +
                     ") overlaps tensor " + quoted(prev.name) + " (offset " + std::to_string(prev.offset) + ", " +
                     std::to_string(prev.n_bytes) + " bytes)");
            }
        }
    }

    const std::string path_;
    const uint8_t *data_;
    uint64_t size_;
    uint64_t pos_ = 0;
    uint64_t nested_arrays_ = 0;  // arrays inside arrays read so far (bounded by GGUF_MAX_NESTED_ARRAYS)
};

// ---- files and split models ---------------------------------------------------------------------------------------

namespace {

std::string errno_text() { return std::strerror(errno); }

// Splits "dir/NAME-00001-of-00003.gguf" into "dir/NAME" and 1 and 3 (llama.cpp's split naming); false if the
// path does not follow it.
bool parse_split_path(const std::string &path, std::string *prefix, unsigned *no, unsigned *count) {
    const std::string tail = "-00000-of-00000.gguf";
    if (path.size() <= tail.size()) return false;
    const std::string end = path.substr(path.size() - tail.size());
    unsigned a = 0, b = 0;
    char extra = 0;
    if (std::sscanf(end.c_str(), "-%5u-of-%5u.gguf%c", &a, &b, &extra) != 2) return false;
    *prefix = path.substr(0, path.size() - tail.size());
    *no = a;
    *count = b;
    return true;
}

std::string split_path(const std::string &prefix, uint64_t no, uint64_t count) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "-%05" PRIu64 "-of-%05" PRIu64 ".gguf", no, count);
    return prefix + buf;
}

}  // namespace

// Private and read-only: weights are never written, and clean pages stay shared with the page cache.
void GGUFFile::map_part(Part &part) {
    const int fd = ::open(part.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw GGUFError(part.path + ": cannot open: " + errno_text());
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw GGUFError(part.path + ": not a regular file");
    }
    part.size = uint64_t(st.st_size);
    if (part.size > 0) {
        void *m = mmap(nullptr, size_t(part.size), PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            const std::string err = errno_text();
            ::close(fd);
            throw GGUFError(part.path + ": cannot map " + std::to_string(part.size) + " bytes: " + err);
        }
        part.mapping = m;
        part.data = static_cast<const uint8_t *>(m);
    }
    ::close(fd);  // the mapping keeps the file alive
}

GGUFFile::~GGUFFile() {
    for (Part &p : parts_) {
        if (p.mapping) munmap(p.mapping, size_t(p.size));
    }
}

std::shared_ptr<GGUFFile> GGUFFile::from_memory(const void *bytes, size_t size, const std::string &name) {
    std::shared_ptr<GGUFFile> file(new GGUFFile());
    file->path_ = name;
    Part part;
    part.path = name;
    const uint8_t *b = static_cast<const uint8_t *>(bytes);
    part.owned.assign(b, b + size);
    part.data = part.owned.data();
    part.size = size;
    file->parts_.push_back(std::move(part));
    file->parse_part(0, true);
    if (file->has("split.count") && file->get("split.count").to_u64(name + ": key 'split.count'") > 1) {
        throw GGUFError(name + ": is one part of a split model; open the first part from disk");
    }
    return file;
}

std::shared_ptr<GGUFFile> GGUFFile::open(const std::string &path) {
    std::shared_ptr<GGUFFile> file(new GGUFFile());
    file->path_ = path;
    file->parts_.emplace_back();
    file->parts_.back().path = path;
    map_part(file->parts_.back());
    file->parse_part(0, true);
    file->open_split_parts();
    return file;
}

// Adds the tensors of parts_[i] (already holding its bytes); the first part also supplies the metadata,
// version and alignment.
void GGUFFile::parse_part(size_t i, bool first) {
    Part &part = parts_[i];
    ParsedPart parsed = GGUFParser(part.path, part.data, part.size).parse(uint32_t(i));
    for (GGUFTensorInfo &t : parsed.tensors) {
        if (!tensor_index_.emplace(t.name, tensors_.size()).second) {
            throw GGUFError(part.path + ": duplicate tensor name " + quoted(t.name));
        }
        tensors_.push_back(std::move(t));
    }
    if (first) {
        version_ = parsed.version;
        alignment_ = parsed.alignment;
        kv_ = std::move(parsed.kv);
        kv_index_ = std::move(parsed.kv_index);
        return;
    }
    // Later parts must say which part they are, in agreement with their file name.
    auto part_key = [&](const char *key) -> uint64_t {
        const auto it = parsed.kv_index.find(key);
        if (it == parsed.kv_index.end()) throw GGUFError(part.path + ": split part lacks key '" + key + "'");
        return parsed.kv[it->second].second.to_u64(part.path + ": key '" + key + "'");
    };
    const uint64_t no = part_key("split.no"), count = part_key("split.count");
    if (no != i || count != parts_.size()) {
        throw GGUFError(part.path + ": split part says it is part " + std::to_string(no + 1) + " of " +
                        std::to_string(count) + "; expected part " + std::to_string(i + 1) + " of " +
                        std::to_string(parts_.size()));
    }
}

void GGUFFile::open_split_parts() {
    const GGUFValue *count_value = find("split.count");
    if (!count_value) return;
    const uint64_t count = count_value->to_u64(path_ + ": key 'split.count'");
    if (count == 0) fail_key("split.count", "expected at least 1, found 0");
    if (count == 1) return;
    const uint64_t no = has("split.no") ? get("split.no").to_u64(path_ + ": key 'split.no'") : 0;
    if (no != 0) {
        throw GGUFError(path_ + ": is part " + std::to_string(no + 1) + " of " + std::to_string(count) +
                        " of a split model; open the first part, " + split_path("NAME", 1, count));
    }
    std::string prefix;
    unsigned name_no = 0, name_count = 0;
    if (!parse_split_path(path_, &prefix, &name_no, &name_count) || name_no != 1 || name_count != count) {
        throw GGUFError(path_ + ": first part of a " + std::to_string(count) +
                        "-part split model, but its name does not end in " + split_path("", 1, count));
    }
    parts_.resize(size_t(count));
    for (uint64_t i = 1; i < count; ++i) {
        parts_[i].path = split_path(prefix, i + 1, count);
        map_part(parts_[i]);
        parse_part(size_t(i), false);
    }
    if (const GGUFValue *n = find("split.tensors.count")) {
        const uint64_t expected = n->to_u64(path_ + ": key 'split.tensors.count'");
        if (expected != tensors_.size()) {
            fail_key("split.tensors.count", "says " + std::to_string(expected) + " tensors, the " +
                                                std::to_string(count) + " parts hold " +
                                                std::to_string(tensors_.size()));
        }
    }
}

uint64_t GGUFFile::file_size() const {
    uint64_t total = 0;
    for (const Part &p : parts_) total += p.size;
    return total;
}

// ---- look-ups ---------------------------------------------------------------------------------------------------

void GGUFFile::fail_key(const std::string &key, const std::string &problem) const {
    throw GGUFError(path_ + ": key " + quoted(key) + ": " + problem);
}

const GGUFValue *GGUFFile::find(const std::string &key) const {
    const auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GGUFValue &GGUFFile::get(const std::string &key) const {
    const GGUFValue *v = find(key);
    if (!v) throw GGUFError(path_ + ": missing key " + quoted(key));
    return *v;
}

namespace {

// An integer value that must fit [lo, hi] of the named type.
int64_t integer_in_range(const GGUFValue &v, const std::string &what, int64_t lo, int64_t hi, const char *type) {
    const int64_t x = v.to_i64(what);
    if (x < lo || x > hi) throw GGUFError(what + ": value " + std::to_string(x) + " does not fit " + type);
    return x;
}

}  // namespace

uint32_t GGUFFile::get_u32(const std::string &key) const {
    return uint32_t(integer_in_range(get(key), path_ + ": key " + quoted(key), 0, UINT32_MAX, "u32"));
}

int32_t GGUFFile::get_i32(const std::string &key) const {
    return int32_t(integer_in_range(get(key), path_ + ": key " + quoted(key), INT32_MIN, INT32_MAX, "i32"));
}

uint64_t GGUFFile::get_u64(const std::string &key) const { return get(key).to_u64(path_ + ": key " + quoted(key)); }

float GGUFFile::get_f32(const std::string &key) const {
    return float(get(key).to_f64(path_ + ": key " + quoted(key)));
}

bool GGUFFile::get_bool(const std::string &key) const { return get(key).to_bool(path_ + ": key " + quoted(key)); }

const std::string &GGUFFile::get_string(const std::string &key) const {
    return get(key).to_string(path_ + ": key " + quoted(key));
}

const GGUFValue &GGUFFile::get_array(const std::string &key, GGUFType element_type) const {
    const GGUFValue &v = get(key);
    if (v.type != GGUF_TYPE_ARRAY || v.array_type != element_type) {
        fail_key(key, std::string("expected an array of ") + gguf_type_name(element_type) + ", found " +
                          (v.type == GGUF_TYPE_ARRAY ? std::string("an array of ") + gguf_type_name(v.array_type)
                                                     : std::string(gguf_type_name(v.type))));
    }
    return v;
}

const GGUFTensorInfo *GGUFFile::find_tensor(const std::string &name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensorInfo &GGUFFile::tensor(const std::string &name) const {
    const GGUFTensorInfo *t = find_tensor(name);
    if (!t) throw GGUFError(path_ + ": no tensor named " + quoted(name));
    return *t;
}

GGUFTensorData GGUFFile::tensor_data(const GGUFTensorInfo &info) const {
    // Bounds were checked at load; this guards against an info that belongs to another file.
    if (info.part >= parts_.size() || info.file_offset > parts_[info.part].size ||
        info.n_bytes > parts_[info.part].size - info.file_offset) {
        throw GGUFError(path_ + ": tensor " + quoted(info.name) + " does not belong to this file");
    }
    const Part &part = parts_[info.part];
    return GGUFTensorData{part.data + info.file_offset, info.n_bytes};
}

}  // namespace flashmtp
