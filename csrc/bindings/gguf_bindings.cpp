// GGUF reader bindings: translation only. Metadata values become Python values (numeric arrays as numpy
// copies); tensor bytes are exposed zero-copy through a read-only buffer that keeps the file mapped.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>

#include "bindings.h"
#include "core/gguf.h"
#include "core/gguf_summary.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

// GGUF strings are UTF-8 by the spec but nothing enforces it; surrogateescape keeps any byte string intact.
py::str to_str(const std::string &s) {
    PyObject *o = PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "surrogateescape");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

const char *numpy_format(GGUFType t) {
    switch (t) {
        case GGUF_TYPE_UINT8: return "<u1";
        case GGUF_TYPE_INT8: return "<i1";
        case GGUF_TYPE_UINT16: return "<u2";
        case GGUF_TYPE_INT16: return "<i2";
        case GGUF_TYPE_UINT32: return "<u4";
        case GGUF_TYPE_INT32: return "<i4";
        case GGUF_TYPE_FLOAT32: return "<f4";
        case GGUF_TYPE_BOOL: return "?";
        case GGUF_TYPE_UINT64: return "<u8";
        case GGUF_TYPE_INT64: return "<i8";
        case GGUF_TYPE_FLOAT64: return "<f8";
        default: return nullptr;
    }
}

py::object to_python(const GGUFValue &v, const std::string &key) {
    switch (v.type) {
        case GGUF_TYPE_BOOL: return py::bool_(v.to_bool(key));
        case GGUF_TYPE_FLOAT32:
        case GGUF_TYPE_FLOAT64: return py::float_(v.to_f64(key));
        case GGUF_TYPE_STRING: return to_str(v.to_string(key));
        case GGUF_TYPE_UINT64: return py::int_(v.to_u64(key));
        case GGUF_TYPE_ARRAY: break;
        default: return py::int_(v.to_i64(key));
    }
    if (v.array_type == GGUF_TYPE_STRING) {
        py::list out(v.array_strings().size());
        for (size_t i = 0; i < v.array_strings().size(); ++i) out[i] = to_str(v.array_strings()[i]);
        return std::move(out);
    }
    if (v.array_type == GGUF_TYPE_ARRAY) {
        py::list out(v.array_values().size());
        for (size_t i = 0; i < v.array_values().size(); ++i) out[i] = to_python(v.array_values()[i], key);
        return std::move(out);
    }
    // No base object given, so numpy copies the bytes: metadata arrays are small and outlive nothing.
    return py::array(py::dtype(numpy_format(v.array_type)), {py::ssize_t(v.array_size)}, {},
                     v.array_bytes().data());
}

// A read-only byte view of one tensor; holding it keeps the whole file mapped.
struct TensorBuffer {
    std::shared_ptr<const GGUFFile> file;
    GGUFTensorData view;
};

py::tuple tensor_info_tuple(const GGUFTensorInfo &t) {
    py::list ne;
    for (uint32_t d = 0; d < t.n_dims; ++d) ne.append(t.ne[d]);
    return py::make_tuple(to_str(t.name), py::tuple(ne), t.type, t.offset, t.n_elements, t.n_bytes, t.part);
}

}  // namespace

void bind_gguf(py::module_ &m) {
    // module.cpp created the Python type flashmtp._core.GGUFError; route the C++ exception to it.
    // Deliberately leaked: a static py::object would be released after the interpreter is gone.
    static PyObject *const gguf_error = py::object(m.attr("GGUFError")).release().ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const GGUFError &e) {
            // Messages quote keys and names from the file, which need not be valid UTF-8.
            const std::string what = e.what();
            PyObject *message = PyUnicode_DecodeUTF8(what.data(), Py_ssize_t(what.size()), "backslashreplace");
            PyErr_SetObject(gguf_error, message);
            Py_XDECREF(message);
        }
    });

    py::class_<TensorBuffer>(m, "GGUFTensorBuffer", py::buffer_protocol())
        .def_buffer([](TensorBuffer &b) {
            return py::buffer_info(const_cast<uint8_t *>(b.view.data), 1, "B", 1, {py::ssize_t(b.view.n_bytes)},
                                   {py::ssize_t(1)}, /*readonly=*/true);
        });

    py::class_<GGUFFile, std::shared_ptr<GGUFFile>>(m, "GGUFFile",
                                                    "A parsed, validated GGUF file (all parts of a split model).")
        .def_static("open", &GGUFFile::open, py::arg("path"), py::call_guard<py::gil_scoped_release>(),
                    "Map and validate a GGUF file; the first part of a split model opens every part.")
        .def_static(
            "from_bytes",
            [](const py::bytes &data, const std::string &name) {
                const std::string_view bytes = data;
                py::gil_scoped_release release;
                return GGUFFile::from_memory(bytes.data(), bytes.size(), name);
            },
            py::arg("data"), py::arg("name") = "<memory>", "Parse a copy of an in-memory GGUF image.")
        .def_property_readonly("path", &GGUFFile::path)
        .def_property_readonly("version", &GGUFFile::version)
        .def_property_readonly("alignment", &GGUFFile::alignment)
        .def_property_readonly("file_size", &GGUFFile::file_size)
        .def_property_readonly("part_paths",
                               [](const GGUFFile &f) {
                                   py::list out;
                                   for (size_t i = 0; i < f.n_parts(); ++i) out.append(f.part_path(i));
                                   return out;
                               })
        .def("metadata_items",
             [](const GGUFFile &f) {
                 py::list out;
                 for (const auto &kv : f.metadata()) {
                     out.append(py::make_tuple(to_str(kv.first), to_python(kv.second, kv.first)));
                 }
                 return out;
             },
             "[(key, value)] in file order.")
        .def("tensor_infos",
             [](const GGUFFile &f) {
                 py::list out;
                 for (const GGUFTensorInfo &t : f.tensors()) out.append(tensor_info_tuple(t));
                 return out;
             },
             "[(name, ggml dims, type id, offset, n_elements, n_bytes, part)] in file order.")
        .def("tensor_buffer",
             [](const std::shared_ptr<GGUFFile> &f, const std::string &name) {
                 return TensorBuffer{f, f->tensor_data(f->tensor(name))};
             },
             py::arg("name"), "A read-only buffer over the tensor's bytes (no copy).")
        .def("summary", [](const GGUFFile &f) {
            const std::string s = gguf_summary(f);
            PyObject *o = PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "replace");
            if (!o) throw py::error_already_set();
            return py::reinterpret_steal<py::str>(o);
        }, "The text `flashmtp info` prints.");
}

}  // namespace flashmtp
