/**
 * The registry from a checkpoint's `architectures` entry to its decoder family.
 * Each family differs from the shared decoder only by these flags.
 */
import { ModelError } from "./model-error.ts";

export interface DecoderFamily {
  name: string;
  qkvBias: boolean;
  qkNorm: boolean;
}

const FAMILIES: Record<string, DecoderFamily> = {
  LlamaForCausalLM: { name: "llama", qkvBias: false, qkNorm: false },
  MistralForCausalLM: { name: "mistral", qkvBias: false, qkNorm: false },
  Qwen2ForCausalLM: { name: "qwen2", qkvBias: true, qkNorm: false },
  Qwen3ForCausalLM: { name: "qwen3", qkvBias: false, qkNorm: true },
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
