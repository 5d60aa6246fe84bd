// flashmtp-cli: the compiled command line (no Python). One function per subcommand, listed in kCommands;
// a wrong command line ends as a message and the usage on stderr and exit status 2 (as argparse does), every
// other error as a message on stderr and exit status 1.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "core/gguf.h"
#include "core/gguf_summary.h"
#include "flashmtp.h"
#include "runtime/chat.h"
#include "runtime/generate.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer.h"

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

// The whole of `text` as a number of type T (float, or a signed or unsigned integer up to 64 bits), else a
// UsageError naming the option.
template <typename T>
T parse_number(const std::string &option, const std::string &text) {
    char *end = nullptr;
    errno = 0;
    bool in_range = true;
    T value;
    if constexpr (std::is_floating_point_v<T>) {
        value = T(std::strtod(text.c_str(), &end));
    } else if constexpr (std::is_unsigned_v<T>) {
        in_range = text.find('-') == std::string::npos;  // strtoull would wrap "-1" around
        const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
        value = T(v);
        in_range = in_range && value == v;
    } else {
        const long long v = std::strtoll(text.c_str(), &end, 10);
        value = T(v);
        in_range = value == v;
    }
    if (text.empty() || *end != '\0' || errno == ERANGE || !in_range) {
        throw UsageError{option + " expects a number, got '" + text + "'"};
    }
    return value;
}

// The options run and chat share (length, sampling, threads): option a with value v. False if a is none.
bool parse_generation_option(const std::string &a, const std::string &v, flashmtp::GenerateParams &params,
                             int &n_threads) {
    if (a == "-n" || a == "--max-tokens") params.max_tokens = parse_number<int>(a, v);
    else if (a == "--temp") params.sampler.temperature = parse_number<float>(a, v);
    else if (a == "--top-k") params.sampler.top_k = parse_number<int32_t>(a, v);
    else if (a == "--top-p") params.sampler.top_p = parse_number<float>(a, v);
    else if (a == "--min-p") params.sampler.min_p = parse_number<float>(a, v);
    else if (a == "--seed") params.sampler.seed = parse_number<uint64_t>(a, v);
    else if (a == "-t" || a == "--threads") n_threads = parse_number<int>(a, v);
    else if (a == "--draft") {
        params.speculative.draft = v == "auto" ? flashmtp::SpeculativeParams::kAuto : parse_number<int>(a, v);
    }
    else if (a == "--draft-mode") params.speculative.mode = flashmtp::parse_draft_mode(v);
    else return false;
    return true;
}

// --draft: auto by default when the engine has a draft head, off without one; asking for drafts without a
// head is an error rather than a silent no-op.
constexpr int kDraftUnset = -2;
void settle_draft(flashmtp::GenerateParams &params, const flashmtp::Engine &engine) {
    const bool given = params.speculative.draft != kDraftUnset;
    if (engine.has_draft_head()) {
        if (!given) params.speculative.draft = flashmtp::SpeculativeParams::kAuto;
        return;
    }
    if (given && params.speculative.draft != 0) {
        throw UsageError{"--draft needs an MTP draft head: pass --mtp HEAD.gguf (or a model file that carries "
                         "its MTP block)"};
    }
    params.speculative.draft = 0;
}

int cmd_run(const Args &args) {
    std::string model, mtp;
    std::optional<std::string> prompt;  // "" is a prompt (BOS only), so absence is tracked apart
    int n_threads = 2;
    flashmtp::GenerateParams params;
    params.speculative.draft = kDraftUnset;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string &a = args[i];
        if (i + 1 >= args.size()) throw UsageError{"unknown option or missing value: '" + a + "'"};
        const std::string &v = args[++i];
        if (a == "-m" || a == "--model") model = v;
        else if (a == "-p" || a == "--prompt") prompt = v;
        else if (a == "--mtp") mtp = v;
        else if (parse_generation_option(a, v, params, n_threads)) continue;
        else if (a == "-c" || a == "--ctx") params.n_ctx = parse_number<int>(a, v);
        else throw UsageError{"unknown option '" + a + "'"};
    }
    if (model.empty() || !prompt) throw UsageError{"run needs -m MODEL and -p PROMPT"};

    const auto t0 = std::chrono::steady_clock::now();
    const auto engine = flashmtp::Engine::load(model, n_threads, mtp);
    settle_draft(params, *engine);
    const auto tokenizer = flashmtp::Tokenizer::from_gguf(*flashmtp::GGUFFile::open(model));
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    const flashmtp::GenerateStats stats =
        flashmtp::generate(*engine, tokenizer, *prompt, params, [](const std::string &piece) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        });
    std::fputc('\n', stdout);
    std::fflush(stdout);
    std::fprintf(stderr, "load:      %.3f s\n", load_s);
    std::fprintf(stderr, "prompt:    %d tokens, %.2f tokens/s\n", stats.n_prompt, stats.prompt_tokens_per_s());
    std::fprintf(stderr, "generated: %d tokens, %.2f tokens/s%s\n", stats.n_generated,
                 stats.generated_tokens_per_s(), stats.stopped_at_eos ? " (stopped at EOS)" : "");
    if (params.speculative.draft != 0) {
        std::fputs(stats.speculative.summary(engine->draft_head_bytes()).c_str(), stderr);
    }
    return 0;
}

// The same conversation loop as the Python `flashmtp chat` (python/flashmtp/chat_cli.py), with the built-in
// chat formatter instead of jinja: one stdin line per user message, the reply streamed to stdout and one
// statistics line per reply on stderr; /reset forgets the conversation, /exit or end of input quits. The
// session is kept between turns and only the tokens after the common prefix are decoded.
int cmd_chat(const Args &args) {
    std::string model, mtp;
    std::optional<std::string> system;
    int n_threads = 2;
    int n_ctx = 0;
    flashmtp::GenerateParams params;
    params.max_tokens = 512;
    params.speculative.draft = kDraftUnset;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string &a = args[i];
        if (i + 1 >= args.size()) throw UsageError{"unknown option or missing value: '" + a + "'"};
        const std::string &v = args[++i];
        if (a == "-m" || a == "--model") model = v;
        else if (a == "--system") system = v;
        else if (a == "--mtp") mtp = v;
        else if (parse_generation_option(a, v, params, n_threads)) continue;
        else if (a == "-c" || a == "--ctx") n_ctx = parse_number<int>(a, v);
        else throw UsageError{"unknown option '" + a + "'"};
    }
    if (model.empty()) throw UsageError{"chat needs -m MODEL"};
    if (n_ctx < 0) throw UsageError{"-c must be >= 0, got " + std::to_string(n_ctx)};
    if (params.max_tokens < 1) throw UsageError{"-n must be >= 1, got " + std::to_string(params.max_tokens)};
    flashmtp::Sampler{params.sampler};  // bad settings fail here, not at every turn

    const auto t0 = std::chrono::steady_clock::now();
    const auto engine = flashmtp::Engine::load(model, n_threads, mtp);
    settle_draft(params, *engine);
    params.speculative.costs = std::make_shared<flashmtp::DraftCosts>();  // measured once for every turn
    const auto file = flashmtp::GGUFFile::open(model);
    const auto tokenizer = flashmtp::Tokenizer::from_gguf(*file);
    const auto chat_template = flashmtp::ChatTemplate::from_gguf(*file, tokenizer);
    if (!chat_template.has_file_template()) {
        std::fprintf(stderr, "warning: %s has no tokenizer.chat_template; using ChatML (as llama.cpp does)\n",
                     model.c_str());
    }
    const auto session = engine->new_session(n_ctx > 0 ? n_ctx : std::min(4096, engine->n_ctx_train()));
    std::fprintf(stderr, "load: %.3f s (chat template: %s)\n",
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                 flashmtp::chat_template_family_name(chat_template.family()));

    std::vector<flashmtp::ChatMessage> messages;
    const auto reset = [&] {
        messages.clear();
        if (system) messages.push_back({"system", *system});
    };
    reset();
    std::vector<int32_t> cached;  // the tokens in the session's first positions
    const bool interactive = isatty(STDIN_FILENO);
    std::string line;
    while (true) {
        if (interactive) std::fputs("> ", stderr);
        if (!std::getline(std::cin, line)) break;
        const size_t begin = line.find_first_not_of(" \t\r"), end = line.find_last_not_of(" \t\r");
        if (begin == std::string::npos) continue;
        const std::string command = line.substr(begin, end + 1 - begin);
        if (command == "/exit") break;
        if (command == "/reset") {
            reset();
            std::fputs("(conversation cleared)\n", stderr);
            continue;
        }
        std::vector<flashmtp::ChatMessage> turn = messages;
        turn.push_back({"user", line});
        std::optional<flashmtp::Generation> generation;
        try {
            const std::vector<int32_t> prompt =
                flashmtp::chat_prompt_tokens(tokenizer, chat_template.apply(turn, true));
            generation.emplace(*session, tokenizer, prompt, cached, params);
        } catch (const std::invalid_argument &e) {  // too long for the context, or refused by the template
            std::fprintf(stderr, "flashmtp-cli chat: error: %s (/reset starts over)\n", e.what());
            continue;
        }
        std::string reply, piece;
        while (generation->step(piece)) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            reply += piece;
            piece.clear();
        }
        std::fputc('\n', stdout);
        std::fflush(stdout);
        cached.assign(generation->tokens().begin(), generation->tokens().begin() + session->n_past());
        turn.push_back({"assistant", reply});
        messages = std::move(turn);
        const flashmtp::GenerateStats &s = generation->stats();
        std::fprintf(stderr, "[prompt: %d new tokens (%d cached), %.2f tokens/s; reply: %d tokens, %.2f tokens/s",
                     s.n_prompt - s.n_reused, s.n_reused, s.prompt_tokens_per_s(), s.n_generated,
                     s.generated_tokens_per_s());
        if (params.speculative.draft != 0) {
            std::fprintf(stderr, "; mtp: %lld of %lld drafts accepted", (long long)s.speculative.accepted,
                         (long long)s.speculative.drafted);
        }
        std::fputs("]\n", stderr);
    }
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
    {"run", "run -m MODEL -p PROMPT", "generate text: [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p M]"
     " [--seed S] [-t THREADS] [-c CTX] [--mtp HEAD.gguf] [--draft N|auto] [--draft-mode coupled|residual|greedy]",
     cmd_run},
    {"chat", "chat -m MODEL", "interactive chat on stdin lines: [--system TEXT] [-n N] [--temp T] [--top-k K]"
     " [--top-p P] [--min-p M] [--seed S] [-t THREADS] [-c CTX] [--mtp HEAD.gguf] [--draft N|auto]"
     " [--draft-mode M]", cmd_chat},
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
        return 2;
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
            return 2;
        } catch (const std::exception &e) {
            std::fprintf(stderr, "flashmtp-cli %s: error: %s\n", c.name, e.what());
        }
        return 1;
    }
    std::fprintf(stderr, "flashmtp-cli: unknown command '%s'\n", args[0].c_str());
    print_help(stderr);
    return 2;
}
