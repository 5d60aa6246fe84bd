// The DeepSeek-V4 MTP (next-n prediction) head: one extra V4 block that drafts the token after next from the
// main model's final residual streams, shared/spec/deepseek4.md "MTP" and spec/gguf.md "The MTP file".
// Owns: the head's weight views and their validation against the main model, its per-sequence state (one
// window-attention ring) and its forward pass. Does not own: the main model's weights it shares (token
// embedding, output matrix), the files' mappings (the engine keeps them alive), the drafting loop
// (runtime/speculative).
//
// Position i of the head reads the main model's final streams X_i (before the output hc-head) and the token at
// i + 1, and predicts the token at i + 2:
//   streams_k = eh_proj [RMS_w(embed(t_{i+1}), enorm) ; RMS_w(X_{i,k}, hnorm)]   for each stream k
//   streams   = block(streams)                     (window attention with its own ring, routed MoE)
//   logits    = output(RMS_w(hc_head(streams), shared_head_norm))
// Recursive drafting feeds the head's own output streams back in as X with the drafted token.
#pragma once

#include <cstdint>
#include <vector>

#include "core/gguf.h"
#include "core/thread_pool.h"
#include "models/deepseek4.h"

namespace flashmtp {

struct Ds4MtpHead {
    Ds4Layer block;                // blk.<n_main>: a window layer with routed (not hash) MoE
    WeightMatrix eh_proj;          // [n_embd, 2 n_embd]: columns [0, n_embd) read e, the rest h
    const float *enorm;            // [n_embd]
    const float *hnorm;            // [n_embd]
    const float *head_norm;        // [n_embd] nextn.shared_head_norm, else the output norm
    HcHead hc_head;                // the head's own: nextn.hc_head_*, or a sidecar's root output_hc_*
    WeightMatrix token_embd;       // the main model's, unless a sidecar carries a different one
    WeightMatrix output;           // likewise
    // Tensors a llama.cpp sidecar copies from the main model, by name, and whether the copy was identical
    // (then the main model's view is used and the copy's pages are never touched again).
    std::vector<std::pair<std::string, bool>> shared_copies;
};

// Loads the head from `file`: an MTP sidecar (nextn_predict_layers = 1, the block at blk.<n_main>, with or
// without copies of token_embd / output / output_norm) or the main model's own file when that carries the
// block. `main` must be the model loaded from main_file. Throws GGUFError naming the file and the mismatch
// (architecture, hidden size, vocabulary, hyper-connection count, block count, any tensor's shape or type).
Ds4MtpHead deepseek4_mtp_load(const GGUFFile &file, const Ds4Model &main);

// True when the main model's file carries its MTP block (nextn_predict_layers = 1 and the block's tensors).
bool deepseek4_has_mtp_block(const GGUFFile &file);

// The head's state is a Ds4State with one attention state; its streams hold the last batch's output streams.
void deepseek4_mtp_state_init(const Ds4MtpHead &head, Ds4State &state, int64_t rewind_depth);

// Runs positions state.attn[0].n_past.. of the head: x_streams [n_tokens, n_streams, n_embd] are the inputs
// X (the main model's final streams, or the head's own output streams when drafting recursively; they may be
// state.streams itself), next_tokens [n_tokens] the tokens at those positions + 1. Writes the logits of the
// last n_logits positions into logits [n_logits, n_vocab] and leaves the output streams in state.streams.
void deepseek4_mtp_forward(const Ds4Model &main, const Ds4MtpHead &head, Ds4State &state, const float *x_streams,
                           const int32_t *next_tokens, int64_t n_tokens, int64_t n_logits, float *logits,
                           ThreadPool &pool);

}  // namespace flashmtp
