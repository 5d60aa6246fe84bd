// The GGUF reader against hand-built byte streams (the spec in core/gguf.h is the oracle): every metadata type,
// versions 2 and 3 (same layout) vs 1 (refused), alignment, tensor placement, split files, and each error path
// with the message it must carry. Every malformed input must raise GGUFError, never crash.
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "check.h"
#include "core/gguf.h"
#include "core/gguf_summary.h"

using namespace flashmtp;

namespace {

// Writes GGUF fields in file order.
struct Builder {
    std::vector<uint8_t> bytes;

    Builder &raw(const void *p, size_t n) {
        const uint8_t *b = static_cast<const uint8_t *>(p);
        bytes.insert(bytes.end(), b, b + n);
        return *this;
    }
    template <typename T>
    Builder &put(T v) { return raw(&v, sizeof v); }
    Builder &u32(uint32_t v) { return put(v); }
    Builder &u64(uint64_t v) { return put(v); }
    Builder &str(const std::string &s) { return u64(s.size()).raw(s.data(), s.size()); }
    Builder &header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
        return raw("GGUF", 4).u32(version).u64(n_tensors).u64(n_kv);
    }
    Builder &key(const std::string &k, GGUFType t) { return str(k).u32(t); }
    Builder &kv_u32(const std::string &k, uint32_t v) { return key(k, GGUF_TYPE_UINT32).u32(v); }
    Builder &kv_str(const std::string &k, const std::string &v) { return key(k, GGUF_TYPE_STRING).str(v); }
    Builder &tensor(const std::string &name, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
        str(name).u32(uint32_t(dims.size()));
        for (uint64_t d : dims) u64(d);
        return u32(type).u64(offset);
    }
    Builder &pad(size_t alignment) {
        while (bytes.size() % alignment) bytes.push_back(0);
        return *this;
    }
    Builder &fill(size_t n, uint8_t v = 0) {
        bytes.insert(bytes.end(), n, v);
        return *this;
    }
};

std::shared_ptr<GGUFFile> parse(const Builder &b) { return GGUFFile::from_memory(b.bytes.data(), b.bytes.size()); }

// A small valid file: two keys, an F32 [2, 4] tensor (ggml dims {4, 2}) and a Q8_0 [1, 32] one.
Builder valid_file() {
    Builder b;
    b.header(2, 2).kv_str("general.architecture", "llama").kv_u32("llama.block_count", 3);
    b.tensor("a", {4, 2}, DTYPE_F32, 0).tensor("q", {32}, DTYPE_Q8_0, 32);
    b.pad(32);
    for (int i = 0; i < 8; ++i) b.put(float(i));
    b.pad(32).fill(34, 7);
    return b;
}

void test_every_value_type() {
    Builder b;
    b.header(0, 14);
    b.key("u8", GGUF_TYPE_UINT8).put(uint8_t(250));
    b.key("i8", GGUF_TYPE_INT8).put(int8_t(-3));
    b.key("u16", GGUF_TYPE_UINT16).put(uint16_t(65000));
    b.key("i16", GGUF_TYPE_INT16).put(int16_t(-32000));
    b.key("u32", GGUF_TYPE_UINT32).put(uint32_t(4000000000u));
    b.key("i32", GGUF_TYPE_INT32).put(int32_t(-2000000000));
    b.key("f32", GGUF_TYPE_FLOAT32).put(0.25f);
    b.key("bool", GGUF_TYPE_BOOL).put(uint8_t(1));
    b.key("string", GGUF_TYPE_STRING).str("h\xc3\xa9llo");
    b.key("u64", GGUF_TYPE_UINT64).put(uint64_t(1) << 63);
    b.key("i64", GGUF_TYPE_INT64).put(-(int64_t(1) << 40));
    b.key("f64", GGUF_TYPE_FLOAT64).put(-1.5);
    b.key("strings", GGUF_TYPE_ARRAY).u32(GGUF_TYPE_STRING).u64(3).str("a").str("").str("ccc");
    b.key("nested", GGUF_TYPE_ARRAY).u32(GGUF_TYPE_ARRAY).u64(2);
    b.u32(GGUF_TYPE_INT16).u64(2).put(int16_t(-1)).put(int16_t(7));
    b.u32(GGUF_TYPE_STRING).u64(1).str("x");
    const auto f = parse(b);
    CHECK(f->metadata().size() == 14);
    CHECK(f->metadata()[3].first == "i16");  // file order kept
    CHECK(f->get_u32("u8") == 250);
    CHECK(f->get_i32("i8") == -3);
    CHECK(f->get_u32("u16") == 65000);
    CHECK(f->get_i32("i16") == -32000);
    CHECK(f->get_u32("u32") == 4000000000u);
    CHECK(f->get_i32("i32") == -2000000000);
    CHECK(f->get_f32("f32") == 0.25f);
    CHECK(f->get_bool("bool"));
    CHECK(f->get_string("string") == "h\xc3\xa9llo");
    CHECK(f->get_u64("u64") == uint64_t(1) << 63);
    CHECK(f->get("i64").to_i64("i64") == -(int64_t(1) << 40));
    CHECK(f->get("f64").to_f64("f64") == -1.5);
    const GGUFValue &strings = f->get_array("strings", GGUF_TYPE_STRING);
    CHECK(strings.array_size == 3 && strings.array_strings()[2] == "ccc" && strings.array_strings()[1].empty());
    const GGUFValue &nested = f->get_array("nested", GGUF_TYPE_ARRAY);
    CHECK(nested.array_values().size() == 2);
    CHECK(nested.array_values()[0].array_i64(0, "nested[0]") == -1);
    CHECK(nested.array_values()[0].array_f64(1, "nested[0]") == 7.0);
    CHECK(nested.array_values()[1].array_strings()[0] == "x");

    // Type mismatches and out-of-range values name the file and key, expected and found.
    CHECK_THROWS(GGUFError, f->get_u32("string"), "<memory>: key 'string': expected an integer, found string");
    CHECK_THROWS(GGUFError, f->get_u32("i8"), "key 'i8': value -3 does not fit u32");
    CHECK_THROWS(GGUFError, f->get_i32("u32"), "value 4000000000 does not fit i32");
    CHECK_THROWS(GGUFError, f->get_u64("i64"), "expected a non-negative integer, found -1099511627776");
    CHECK_THROWS(GGUFError, f->get("u64").to_i64("u64"), "expected an integer below 2^63");
    CHECK_THROWS(GGUFError, f->get_f32("u8"), "key 'u8': expected f32 or f64, found u8");
    CHECK_THROWS(GGUFError, f->get_bool("u8"), "expected bool, found u8");
    CHECK_THROWS(GGUFError, f->get_string("f64"), "expected string, found f64");
    CHECK_THROWS(GGUFError, f->get_array("strings", GGUF_TYPE_INT32), "expected an array of i32, found an array of string");
    CHECK_THROWS(GGUFError, f->get_array("u8", GGUF_TYPE_INT32), "expected an array of i32, found u8");
    CHECK_THROWS(GGUFError, f->get("absent"), "missing key 'absent'");
    CHECK(f->find("absent") == nullptr);
    CHECK_THROWS(GGUFError, nested.array_values()[0].array_i64(2, "nested[0]"), "no integer element 2");

    const std::string summary = gguf_summary(*f);
    CHECK(summary.find("strings                            = [string x 3] \"a\", \"\", \"ccc\"") != std::string::npos);
    CHECK(summary.find("nested                             = [array x 2] {[i16 x 2] -1, 7}, {[string x 1] \"x\"}") !=
          std::string::npos);
}

void test_versions() {
    for (uint32_t version : {2u, 3u}) {
        Builder b = valid_file();
        std::memcpy(&b.bytes[4], &version, 4);
        const auto f = parse(b);
        CHECK(f->version() == version);
        CHECK(f->tensors().size() == 2);
    }
    const auto with_version = [](uint32_t version) {
        Builder b = valid_file();
        std::memcpy(&b.bytes[4], &version, 4);
        return b;
    };
    CHECK_THROWS(GGUFError, parse(with_version(1)), "GGUF version 1 (32-bit counts) is not supported");
    CHECK_THROWS(GGUFError, parse(with_version(4)), "unsupported GGUF version 4; expected 2 or 3");
    CHECK_THROWS(GGUFError, parse(with_version(0x03000000)), "big-endian GGUF files are not supported");
    Builder bad_magic = valid_file();
    bad_magic.bytes[0] = 'X';
    CHECK_THROWS(GGUFError, parse(bad_magic), "not a GGUF file");
    CHECK_THROWS(GGUFError, GGUFFile::from_memory(nullptr, 0), "not a GGUF file");
}

void test_tensors_and_alignment() {
    const Builder b = valid_file();
    const auto f = parse(b);
    const GGUFTensorInfo &a = f->tensor("a");
    CHECK(a.n_dims == 2 && a.ne[0] == 4 && a.ne[1] == 2 && a.ne[2] == 1 && a.n_elements == 8 && a.n_bytes == 32);
    const GGUFTensorData data = f->tensor_data(a);
    float values[8];
    std::memcpy(values, data.data, sizeof values);
    CHECK(values[0] == 0.0f && values[7] == 7.0f);
    const GGUFTensorInfo &q = f->tensor("q");
    CHECK(q.n_bytes == 34 && q.offset == 32 && f->tensor_data(q).data[33] == 7);
    CHECK(f->find_tensor("missing") == nullptr);
    CHECK_THROWS(GGUFError, f->tensor("missing"), "no tensor named 'missing'");

    // A custom alignment moves the data section and constrains offsets.
    Builder c;
    c.header(1, 1).kv_u32("general.alignment", 256).tensor("t", {2}, DTYPE_F32, 256);
    c.pad(256).fill(256 + 8);
    const auto g = parse(c);
    CHECK(g->alignment() == 256);
    CHECK(g->tensors()[0].file_offset == 512);
    for (uint32_t bad : {0u, 1u, 3u, 4u, 48u}) {
        Builder d;
        d.header(0, 1).kv_u32("general.alignment", bad);
        CHECK_THROWS(GGUFError, parse(d), "general.alignment': expected a power of two >= 8, found");
    }
    Builder wrong_type;
    wrong_type.header(0, 1).key("general.alignment", GGUF_TYPE_UINT64).u64(32);
    CHECK_THROWS(GGUFError, parse(wrong_type), "general.alignment': expected u32, found u64");
}

// A header with one tensor, and enough zeroed data after it for `data_bytes`.
Builder one_tensor(std::vector<uint64_t> dims, uint32_t type, uint64_t offset, size_t data_bytes) {
    Builder b;
    b.header(1, 0).tensor("w", std::move(dims), type, offset);
    b.pad(32).fill(data_bytes);
    return b;
}

void test_malformed() {
    // Truncation at every byte: always an error, never a read past the end.
    const Builder valid = valid_file();
    for (size_t n = 0; n < valid.bytes.size(); ++n) {
        bool threw = false;
        try {
            GGUFFile::from_memory(valid.bytes.data(), n);
        } catch (const GGUFError &) {
            threw = true;
        }
        CHECK_MSG(threw, "truncated to %zu bytes", n);
    }

    Builder b;
    b.header(0, uint64_t(1) << 60);
    CHECK_THROWS(GGUFError, parse(b), "metadata key-value count 1152921504606846976 cannot fit");
    b = Builder();
    b.header(uint64_t(1) << 62, 0);
    CHECK_THROWS(GGUFError, parse(b), "tensor count 4611686018427387904 cannot fit");
    b = Builder();
    b.header(0, 1).u64(uint64_t(-1)).fill(16);
    CHECK_THROWS(GGUFError, parse(b), "metadata key length 18446744073709551615 exceeds");
    b = Builder();
    b.header(0, 1).key("k", GGUF_TYPE_STRING).u64(1000).raw("abc", 3);
    CHECK_THROWS(GGUFError, parse(b), "key 'k' length 1000 exceeds the 3 bytes left");
    b = Builder();
    b.header(0, 1).key("k", GGUF_TYPE_ARRAY).u32(GGUF_TYPE_UINT64).u64(uint64_t(1) << 61);
    CHECK_THROWS(GGUFError, parse(b), "key 'k': array of 2305843009213693952 u64 cannot fit");
    b = Builder();
    b.header(0, 1).key("k", GGUF_TYPE_ARRAY).u32(GGUF_TYPE_STRING).u64(100).fill(80);
    CHECK_THROWS(GGUFError, parse(b), "array of 100 string cannot fit");
    b = Builder();
    b.header(0, 1).key("k", GGUFType(13)).u32(0);
    CHECK_THROWS(GGUFError, parse(b), "key 'k': unknown value type id 13");
    b = Builder();
    b.header(0, 1).key("k", GGUF_TYPE_ARRAY).u32(99).u64(0);
    CHECK_THROWS(GGUFError, parse(b), "unknown array element type id 99");
    b = Builder();
    b.header(0, 1).key("deep", GGUF_TYPE_ARRAY);
    for (int i = 0; i < 100; ++i) b.u32(GGUF_TYPE_ARRAY).u64(1);
    b.u32(GGUF_TYPE_UINT8).u64(0);
    CHECK_THROWS(GGUFError, parse(b), "arrays nested deeper than 8 levels");
    // 2^16 + 1 empty nested arrays: 786 KB of file that would cost ~10 MB of values; refused by count.
    b = Builder();
    b.header(0, 1).key("wide", GGUF_TYPE_ARRAY).u32(GGUF_TYPE_ARRAY).u64(GGUF_MAX_NESTED_ARRAYS + 1);
    for (uint64_t i = 0; i <= GGUF_MAX_NESTED_ARRAYS; ++i) b.u32(GGUF_TYPE_UINT8).u64(0);
    CHECK_THROWS(GGUFError, parse(b), "more than 65536 nested arrays in one file");
    b = Builder();
    b.header(0, 2).kv_u32("k", 1).kv_u32("k", 2);
    CHECK_THROWS(GGUFError, parse(b), "duplicate metadata key 'k'");

    CHECK_THROWS(GGUFError, parse(one_tensor({4}, 4, 0, 64)), "tensor 'w': unknown or unsupported tensor type id 4");
    CHECK_THROWS(GGUFError, parse(one_tensor({4}, 1000, 0, 64)), "unknown or unsupported tensor type id 1000");
    // Internal activation formats have traits but are never valid in a file.
    CHECK_THROWS(GGUFError, parse(one_tensor({32}, DTYPE_Q8_0X, 0, 64)), "unknown or unsupported tensor type id 64");
    CHECK_THROWS(GGUFError, parse(one_tensor({}, DTYPE_F32, 0, 64)), "tensor 'w': 0 dimensions; expected 1 to 4");
    CHECK_THROWS(GGUFError, parse(one_tensor({1, 1, 1, 1, 1}, DTYPE_F32, 0, 64)), "5 dimensions; expected 1 to 4");
    CHECK_THROWS(GGUFError, parse(one_tensor({4, 0}, DTYPE_F32, 0, 64)), "dimension 1 is 0; expected at least 1");
    CHECK_THROWS(GGUFError, parse(one_tensor({uint64_t(-2)}, DTYPE_F32, 0, 64)), "dimension 0 is -2");
    CHECK_THROWS(GGUFError, parse(one_tensor({31}, DTYPE_Q8_0, 0, 64)),
                 "first dimension 31 is not a multiple of the q8_0 block size 32");
    CHECK_THROWS(GGUFError, parse(one_tensor({uint64_t(1) << 32, uint64_t(1) << 32}, DTYPE_F32, 0, 64)),
                 "element count overflows");
    CHECK_THROWS(GGUFError, parse(one_tensor({uint64_t(1) << 62}, DTYPE_F32, 0, 64)), "byte size overflows");
    CHECK_THROWS(GGUFError, parse(one_tensor({17}, DTYPE_F32, 0, 64)),
                 "tensor 'w': data at offset 0 (+64 data start), 68 bytes, ends past the end of the file (128 bytes)");
    CHECK_THROWS(GGUFError, parse(one_tensor({4}, DTYPE_F32, uint64_t(-32), 64)), "ends past the end of the file");
    CHECK_THROWS(GGUFError, parse(one_tensor({4}, DTYPE_F32, 16, 64)),
                 "tensor 'w': data offset 16 is not a multiple of the alignment 32");

    b = Builder();
    b.header(2, 0).tensor("x", {16}, DTYPE_F32, 0).tensor("y", {4}, DTYPE_F32, 32).pad(32).fill(128);
    CHECK_THROWS(GGUFError, parse(b), "tensor 'y' (offset 32) overlaps tensor 'x' (offset 0, 64 bytes)");
    b = Builder();
    b.header(2, 0).tensor("x", {4}, DTYPE_F32, 0).tensor("x", {4}, DTYPE_F32, 32).pad(32).fill(64);
    CHECK_THROWS(GGUFError, parse(b), "duplicate tensor name 'x'");
}

std::vector<std::string> &written_files() {
    static std::vector<std::string> paths;
    return paths;
}

std::string write_temp(const std::string &path, const Builder &b) {
    written_files().push_back(path);
    FILE *f = std::fopen(path.c_str(), "wb");
    if (!f) return path;
    std::fwrite(b.bytes.data(), 1, b.bytes.size(), f);
    std::fclose(f);
    return path;
}

// Part i of n as llama.cpp's gguf-split writes it: split.* keys in every part, metadata in the first.
Builder split_part(uint16_t no, uint16_t count, int32_t total_tensors, const std::string &tensor) {
    Builder b;
    b.header(1, no == 0 ? 4 : 3);
    if (no == 0) b.kv_str("general.architecture", "llama");
    b.key("split.no", GGUF_TYPE_UINT16).put(no);
    b.key("split.count", GGUF_TYPE_UINT16).put(count);
    b.key("split.tensors.count", GGUF_TYPE_INT32).put(total_tensors);
    b.tensor(tensor, {4}, DTYPE_F32, 0).pad(32);
    for (int i = 0; i < 4; ++i) b.put(float(no * 10 + i));
    return b;
}

void test_files_and_splits() {
    char dir_template[] = "/tmp/flashmtp_test_gguf_XXXXXX";
    const char *dir = mkdtemp(dir_template);
    CHECK(dir != nullptr);
    if (!dir) return;
    const std::string d = dir;

    const auto f = GGUFFile::open(write_temp(d + "/single.gguf", valid_file()));
    CHECK(f->n_parts() == 1 && f->tensors().size() == 2 && f->file_size() == valid_file().bytes.size());
    CHECK_THROWS(GGUFError, GGUFFile::open(d + "/absent.gguf"), "absent.gguf: cannot open: No such file");
    CHECK_THROWS(GGUFError, GGUFFile::open(d), "not a regular file");
    CHECK_THROWS(GGUFError, GGUFFile::open(write_temp(d + "/empty.gguf", Builder())), "empty.gguf: not a GGUF file");

    const std::string first = write_temp(d + "/m-00001-of-00003.gguf", split_part(0, 3, 3, "t0"));
    write_temp(d + "/m-00002-of-00003.gguf", split_part(1, 3, 3, "t1"));
    write_temp(d + "/m-00003-of-00003.gguf", split_part(2, 3, 3, "t2"));
    const auto s = GGUFFile::open(first);
    CHECK(s->n_parts() == 3 && s->tensors().size() == 3);
    CHECK(s->get_string("general.architecture") == "llama");
    const GGUFTensorInfo &t2 = s->tensor("t2");
    CHECK(t2.part == 2);
    float v;
    std::memcpy(&v, s->tensor_data(t2).data + 4, 4);
    CHECK(v == 21.0f);
    CHECK(gguf_summary(*s).find("3 (split model)") != std::string::npos);

    CHECK_THROWS(GGUFError, GGUFFile::open(d + "/m-00002-of-00003.gguf"),
                 "is part 2 of 3 of a split model; open the first part, NAME-00001-of-00003.gguf");
    CHECK_THROWS(GGUFError, GGUFFile::open(write_temp(d + "/renamed.gguf", split_part(0, 3, 3, "t0"))),
                 "its name does not end in -00001-of-00003.gguf");
    write_temp(d + "/n-00001-of-00002.gguf", split_part(0, 2, 2, "t0"));
    CHECK_THROWS(GGUFError, GGUFFile::open(d + "/n-00001-of-00002.gguf"), "n-00002-of-00002.gguf: cannot open");
    write_temp(d + "/n-00002-of-00002.gguf", split_part(1, 2, 2, "t0"));
    CHECK_THROWS(GGUFError, GGUFFile::open(d + "/n-00001-of-00002.gguf"), "duplicate tensor name 't0'");
    write_temp(d + "/n-00002-of-00002.gguf", split_part(0, 2, 2, "t1"));
    CHECK_THROWS(GGUFError, GGUFFile::open(d + "/n-00001-of-00002.gguf"),
                 "split part says it is part 1 of 2; expected part 2 of 2");
    write_temp(d + "/n-00001-of-00002.gguf", split_part(0, 2, 5, "t0"));
    write_temp(d + "/n-00002-of-00002.gguf", split_part(1, 2, 5, "t1"));
    CHECK_THROWS(GGUFError, GGUFFile::open(d + "/n-00001-of-00002.gguf"),
                 "key 'split.tensors.count': says 5 tensors, the 2 parts hold 2");
    CHECK_THROWS(GGUFError, GGUFFile::from_memory(split_part(0, 2, 2, "t0").bytes.data(),
                                                  split_part(0, 2, 2, "t0").bytes.size()),
                 "is one part of a split model");
    for (const std::string &path : written_files()) unlink(path.c_str());
    rmdir(dir);
}

}  // namespace

int main() {
    test_every_value_type();
    test_versions();
    test_tensors_and_alignment();
    test_malformed();
    test_files_and_splits();
    return test::exit_code("test_gguf");
}
