/**
 * The registry from a checkpoint's `architectures` entry to its decoder family.
 * Each family differs from the shared decoder only by these flags.
 */
import { ModelError } from "./model-error.ts";

export interface DecoderFamily {
  name: string;
  qkvBias: boolean;
  qkNorm: boolean;
  /** Whether config.attention_bias adds biases to q, k, v and o (Llama, Qwen3). */
  attentionBiasFlag: boolean;
}

const FAMILIES: Record<string, DecoderFamily> = {
  LlamaForCausalLM: { name: "llama", qkvBias: false, qkNorm: false, attentionBiasFlag: true },
  MistralForCausalLM: { name: "mistral", qkvBias: false, qkNorm: false, attentionBiasFlag: false },
  Qwen2ForCausalLM: { name: "qwen2", qkvBias: true, qkNorm: false, attentionBiasFlag: false },
  Qwen3ForCausalLM: { name: "qwen3", qkvBias: false, qkNorm: true, attentionBiasFlag: true },
};

export const SUPPORTED_ARCHITECTURES = Object.keys(FAMILIES);

export function familyFor(architecture: string): DecoderFamily {
  const family = FAMILIES[architecture];
  if (!family) {
    throw new ModelError(
      "UNSUPPORTED_MODEL",
      `unsupported architecture "${architecture}"; supported: ${SUPPORTED_ARCHITECTURES.join(", ")}`,
    );
  }
  return family;
}
