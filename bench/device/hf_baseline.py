"""
HF transformers' static-batch baseline for the GPU device check (issue 26): the same random
checkpoint tokenmill's device check benches (qwen3-0.6b-random), in bfloat16, with greedy
`generate` at the device check's concurrencies and lengths (128 prompt tokens of random ids,
64 generated with EOS ignored), and the TTFT of a 1,024-token prompt. It writes a JSON report
beside tokenmill's, so bench/device/gpu-run.sh can put both in one table.

  python3 bench/device/hf_baseline.py --model DIR --out FILE [--concurrency 1,32,128]

It runs where PyTorch and transformers are installed (the lent GPU machine); nothing here
needs Node.
"""
import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--model", required=True, help="the checkpoint folder (config.json, model.safetensors)")
    parser.add_argument("--out", required=True, help="where the JSON report goes")
    parser.add_argument("--concurrency", default="1,32,128", help="static batch sizes, comma-separated")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--ttft-input-len", type=int, default=1024)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, __version__ as transformers_version

    if not torch.cuda.is_available():
        print("hf_baseline: no CUDA device", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=dtype).cuda().eval()
    vocab = model.config.vocab_size
    generator = torch.Generator(device="cpu").manual_seed(0)

    def prompts(batch: int, length: int) -> torch.Tensor:
        # NOTE: ids below the first special token (151643 for Qwen3), as tokenmill's bench draws them.
        return torch.randint(0, min(vocab, 151643), (batch, length), generator=generator).cuda()

    def timed(fn) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start

    def generate(ids: torch.Tensor, new_tokens: int) -> None:
        with torch.inference_mode():
            model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                do_sample=False, pad_token_id=0, use_cache=True,
            )

    points = []
    for batch in [int(c) for c in args.concurrency.split(",")]:
        ids = prompts(batch, args.input_len)
        generate(ids, 2)  # warm-up: kernels, allocator
        ttft = timed(lambda: generate(ids, 1))
        total = timed(lambda: generate(ids, args.output_len))
        points.append({
            "concurrency": batch, "inputLen": args.input_len, "outputLen": args.output_len,
            "outputThroughput": batch * args.output_len / total, "ttftMs": ttft * 1000, "seconds": total,
        })
        print(f"c{batch}: {batch * args.output_len / total:.1f} output tok/s, TTFT (batch prefill) {ttft * 1000:.1f} ms", flush=True)

    long_ids = prompts(1, args.ttft_input_len)
    generate(long_ids, 1)
    ttft_long = min(timed(lambda: generate(long_ids, 1)) for _ in range(3))
    print(f"TTFT, {args.ttft_input_len}-token prompt: {ttft_long * 1000:.1f} ms", flush=True)

    report = {
        "format": "tokenmill-hf-baseline/1", "model": args.model, "dtype": args.dtype,
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": transformers_version,
        "points": points, "ttft": {"inputLen": args.ttft_input_len, "ttftMs": ttft_long * 1000},
        "gpuMemoryMaxAllocatedMiB": torch.cuda.max_memory_allocated() / 2**20,
    }
    with open(args.out, "w") as out:
        json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
