// DeepSeek-V4 (GGUF architecture "deepseek4"): hyper-connected residual streams around window / CSA / HCA
// attention and a mixture of experts (hash-routed on the first layers), shared/spec/deepseek4.md.
// Owns: the hyperparameters and weight views of one model, their validation against the GGUF file
// (shared/spec/gguf.md), the per-sequence state (every layer's attention state and the activation buffers)
// and the forward pass over a batch of tokens. Does not own: the file mapping (the engine keeps it alive), the
// threads, the arithmetic of the blocks (csrc/layers: hyper, ds4_attention, moe).
#pragma once

#include <cstdint>
#include <vector>

#include "core/gguf.h"
#include "core/thread_pool.h"
#include "layers/ds4_attention.h"
#include "layers/hyper.h"
#include "layers/matmul.h"
#include "layers/moe.h"

namespace flashmtp {

struct Ds4Hparams {
    int64_t n_vocab, n_embd, n_ctx_train;
    int64_t n_layer;        // main blocks: block_count minus nextn_predict_layers (the MTP block is not run)
    int64_t n_nextn;        // MTP blocks carried in the file (0 or 1), blk.<n_layer>.*
    int64_t n_head, head_dim, n_rot;
    int64_t n_expert, n_expert_used, n_ff_exp, n_ff_shexp;
    int64_t n_hash_layer;   // blocks [0, n_hash_layer) route by token id (ffn_gate_tid2eid)
    float rms_eps;
    HcParams hc;
};

struct Ds4Layer {
    Ds4AttentionShape attn_shape;  // kind from attention.compress_ratios: 0 window, 4 CSA, other HCA
    const float *attn_norm;        // [n_embd]
    Ds4AttentionWeights attn;
    const float *ffn_norm;         // [n_embd]
    MoeLayer moe;
    HcMixer hc_attn, hc_ffn;
};

struct Ds4Model {
    Ds4Hparams hparams;
    WeightMatrix token_embd;  // [n_vocab, n_embd], rows dequantized one token at a time
    std::vector<Ds4Layer> layers;
    HcHead hc_head;            // output_hc_*
    const float *output_norm;  // [n_embd]
    WeightMatrix output;       // [n_vocab, n_embd]
    // Rotary frequencies [n_rot / 2]: window layers use "main" (rope.freq_base); CSA and HCA layers, their
    // compressors and indexers "compress" (compress_rope_freq_base, YaRN when rope.scaling.type = yarn).
    std::vector<float> rope_main, rope_compress;
};

class TensorBinder;

// Reads and validates the hyperparameters and every tensor of `file`: each expected tensor must exist with
// its shape and a usable type, and no other tensor may be present except an MTP block (blk.<n_layer>.*, with
// nextn_predict_layers = 1), which this model leaves to the MTP head. Throws GGUFError naming the file, the
// key or tensor, and expected vs found. The views point into `file`'s mapping.
Ds4Model deepseek4_load(const GGUFFile &file);

// Pieces of the loader the MTP head's loader shares (models/deepseek4_mtp.cpp): the hyperparameters of a file
// (a sidecar's too), and the views of block il (blk.<il>.*), validated, throwing GGUFError as above.
Ds4Hparams deepseek4_read_hparams(const GGUFFile &file);
Ds4Layer deepseek4_bind_block(const GGUFFile &file, TensorBinder &bind, const Ds4Hparams &h, int64_t il,
                              bool hash_routed);

// Everything one sequence owns: every layer's attention state (sliding-window ring, compressor rings and
// compressed entries) and the activation buffers, sized for the largest batch seen so far. The rings keep
// `rewind_depth` positions more than a forward pass needs, so a rewind by that many positions is a
// truncation (deepseek4_rewind); a longer one re-runs the kept tokens (runtime/engine.cpp).
struct Ds4State {
    std::vector<Ds4AttentionState> attn;  // [n_layer]
    // Activations of one batch; resized by deepseek4_forward.
    std::vector<float> embd;      // [n_tokens, n_embd]
    // [n_tokens, hc.n_streams, n_embd] residual streams. After deepseek4_forward they hold the batch's final
    // streams (after the last block, before hc_head): the input the MTP head takes with the next token.
    std::vector<float> streams;
    std::vector<float> hc_weights;  // [n_tokens, hc_weights_size(n_streams)]
    std::vector<float> mtp_input;   // MTP head only: [n_tokens, n_streams, 2 n_embd], the eh_proj input
    std::vector<float> x;           // [n_tokens, n_embd] block input, collapsed from the streams
    std::vector<float> x_norm;      // [n_tokens, n_embd]
    std::vector<float> block_out;   // [n_tokens, n_embd] attention or MoE output
    HcScratch hc_scratch;
    Ds4AttentionScratch attn_scratch;
    MoeScratch moe_scratch;
    MatmulScratch matmul_scratch;
};

// An empty state (no position processed) that can rewind by up to rewind_depth positions in place.
void deepseek4_state_init(const Ds4Model &model, Ds4State &state, int64_t rewind_depth);

// Drops positions [n_past, current): exact, see ds4_attention_rewind; throws std::invalid_argument beyond the
// state's rewind depth.
void deepseek4_rewind(const Ds4Model &model, Ds4State &state, int64_t n_past);

// Bytes of the per-sequence attention state (rings and compressed entries, fp32); grows with the entries.
size_t deepseek4_state_bytes(const Ds4State &state);

// Runs tokens [n_tokens] at positions n_past.. (which must be the state's position count) through the
// model, advancing every layer's attention state, and writes the logits of the last n_logits tokens into
// logits [n_logits, n_vocab]. The caller has checked the token ids and 0 <= n_logits <= n_tokens.
void deepseek4_forward(const Ds4Model &model, Ds4State &state, const int32_t *tokens, int64_t n_tokens,
                       int64_t n_past, int64_t n_logits, float *logits, ThreadPool &pool);

// The steps of a forward pass, shared with the MTP head:
// out [n_tokens, n_embd] = the rows of token_embd [n_vocab, n_embd] for tokens, dequantized;
void deepseek4_embed(const WeightMatrix &token_embd, const int32_t *tokens, int64_t n_tokens, float *out);
// sizes the state's activation buffers for a batch of n_tokens;
void deepseek4_resize_batch(const Ds4Hparams &h, Ds4State &state, int64_t n_tokens);
// runs one block (mixer, attention, mixer, MoE) over state.streams [n_tokens, n_streams, n_embd] in place,
// advancing `attn`; tokens feed hash routing;
void deepseek4_block_forward(const Ds4Hparams &h, const Ds4Layer &layer, const float *rope, const int32_t *tokens,
                             int64_t n_tokens, Ds4AttentionState &attn, Ds4State &state, ThreadPool &pool);
// logits [n_logits, n_vocab] of streams [n_logits, n_streams, n_embd]: hc-head, RMS norm, output matrix.
void deepseek4_logits(const Ds4Hparams &h, const HcHead &head, const float *norm, const WeightMatrix &output,
                      const float *streams, int64_t n_logits, float *logits, Ds4State &state, ThreadPool &pool);

}  // namespace flashmtp
