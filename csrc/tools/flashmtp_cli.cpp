// flashmtp-cli: the compiled command line (no Python). One function per subcommand, listed in kCommands;
// every error ends as a message on stderr and exit status 1.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "core/gguf.h"
#include "core/gguf_summary.h"
#include "flashmtp.h"

namespace {

using Args = std::vector<std::string>;

// A wrong command line: printed with the usage hint.
struct UsageError {
    std::string message;
};

int cmd_info(const Args &args) {
    if (args.size() != 1) throw UsageError{"info takes one argument: MODEL.gguf"};
    const auto file = flashmtp::GGUFFile::open(args[0]);
    std::fputs(flashmtp::gguf_summary(*file).c_str(), stdout);
    return 0;
}

struct Command {
    const char *name;
    const char *usage;
    const char *help;
    int (*run)(const Args &);
};

const Command kCommands[] = {
    {"info", "info MODEL.gguf", "summarise a GGUF model (the first part of a split model opens all parts)",
     cmd_info},
};

void print_help(FILE *out) {
    std::fprintf(out, "usage: flashmtp-cli [--help] [--version] COMMAND [ARGS]\n\ncommands:\n");
    for (const Command &c : kCommands) std::fprintf(out, "  %-24s %s\n", c.usage, c.help);
}

}  // namespace

int main(int argc, char **argv) {
    const Args args(argv + 1, argv + argc);
    if (args.empty()) {
        print_help(stderr);
        return 1;
    }
    if (args[0] == "--help" || args[0] == "-h") {
        print_help(stdout);
        return 0;
    }
    if (args[0] == "--version") {
        std::printf("flashmtp-cli %s\n", flashmtp::version());
        return 0;
    }
    for (const Command &c : kCommands) {
        if (args[0] != c.name) continue;
        try {
            return c.run(Args(args.begin() + 1, args.end()));
        } catch (const UsageError &e) {
            std::fprintf(stderr, "flashmtp-cli: %s\nusage: flashmtp-cli %s\n", e.message.c_str(), c.usage);
        } catch (const std::exception &e) {
            std::fprintf(stderr, "flashmtp-cli %s: error: %s\n", c.name, e.what());
        }
        return 1;
    }
    std::fprintf(stderr, "flashmtp-cli: unknown command '%s'\n", args[0].c_str());
    print_help(stderr);
    return 1;
}
