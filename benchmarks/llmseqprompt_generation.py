"""LLMSeqPrompt's evaluation cost: generating ``llmseqprompt_num_samples`` titles per user with each
prompt read once (``llmseqprompt_shared_prefill: True``, the default) against ``generate`` alone,
which reads every prompt once per sample.

Both ways run on the same users' test histories, interleaved, from the same seed; the report has
seconds per user (medians over ``--repeats``), tokens processed per second (prompt tokens read plus
titles' tokens generated), the ratio, and whether the two gave the same titles. The LoRA adapters
are as built (B = 0: the base LLM), which changes what is written, not what it costs.

    python benchmarks/llmseqprompt_generation.py --dataset=ml-100k --users=32 --repeats=3
"""

import json
import resource
import statistics
import time

from harness import parser, report_head, report_path, start, write_report


def main():
    flags = parser(__doc__)
    flags.add_argument("--llm_path", default="smollm2-135m")
    flags.add_argument("--users", type=int, default=32, help="test users whose titles are generated")
    flags.add_argument("--repeats", type=int, default=3)
    flags.add_argument("--llmseqprompt_config", default="{}", help="JSON dict of LLMSeqPrompt config overrides")
    args = flags.parse_args()
    common = start(args)

    import torch
    from recbole.utils import init_seed

    from recbole_llmsrec.config import Config
    from recbole_llmsrec.llm.text import history_windows
    from recbole_llmsrec.quick_start import _build

    overrides = json.loads(args.llmseqprompt_config)
    config = Config(model="LLMSeqPrompt", config_dict={
        **common, **json.loads(args.config), "llm_path": args.llm_path, **overrides})
    init_seed(config["seed"], config["reproducibility"])
    _, _, _, test_data, model, _ = _build(config)
    model.eval()

    histories = []
    for batch in test_data:
        interaction = batch[0]
        rows, _ = history_windows(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], model.history_len)
        for user, history in zip(interaction[model.USER_ID].tolist(), rows):
            if len(histories) < args.users and user not in {u for u, _ in histories}:
                histories.append((user, list(history)))
        if len(histories) >= args.users:
            break
    histories = [history for _, history in histories]
    chunks = [histories[s : s + model.llm_batch_size] for s in range(0, len(histories), model.llm_batch_size)]
    samples = model.num_samples if model.temperature > 0 else 1

    def generate(shared):
        model.shared_prefill = shared
        torch.manual_seed(config["seed"])
        titles, generated, read = [], 0, 0
        start_time = time.perf_counter()
        for chunk in chunks:
            prompts = [model.prompt_ids(h) for h in chunk]
            with torch.no_grad():
                output = model._generate(prompts, samples)
            width = max(map(len, prompts))
            new = output[:, width:]
            generated += int((new != model.pad_id).sum())
            # the prompt tokens the LLM reads: once per user shared, once per sample alone (padding included)
            read += width * len(chunk) * (1 if shared and samples > 1 else samples)
            titles += model.tokenizer.batch_decode(new, skip_special_tokens=True)
        return time.perf_counter() - start_time, titles, generated, read

    runs = {"shared_prefill": [], "generate_alone": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, shared in (("shared_prefill", True), ("generate_alone", False)):
            seconds, titles, generated, read = generate(shared)
            runs[name].append(seconds)
            outputs[name] = (titles, generated, read)

    report = report_head(args, "llmseqprompt_generation.py", [
        f"--llm_path={args.llm_path}", f"--users={args.users}", f"--repeats={args.repeats}",
        f"--llmseqprompt_config='{args.llmseqprompt_config}'"])
    del report["models"]
    report.update(
        users=len(histories), samples_per_user=samples, llm_batch_size=model.llm_batch_size,
        max_new_tokens=model.max_new_tokens, prompt_history_len=model.history_len,
        torch_threads=torch.get_num_threads(), overrides=overrides,
        mean_prompt_tokens=statistics.mean(len(model.prompt_ids(h)) for h in histories),
    )
    for name, seconds in runs.items():
        _, generated, read = outputs[name]
        median = statistics.median(seconds)
        report[name] = {
            "seconds_all": seconds, "seconds_median": median, "seconds_per_user": median / len(histories),
            "prompt_tokens_read": read, "tokens_generated": generated,
            "tokens_per_second": (read + generated) / median,
        }
    report["alone_over_shared"] = report["generate_alone"]["seconds_median"] / report["shared_prefill"]["seconds_median"]
    report["same_titles"] = outputs["shared_prefill"][0] == outputs["generate_alone"][0]
    report["same_titles_share"] = statistics.mean(
        a == b for a, b in zip(outputs["shared_prefill"][0], outputs["generate_alone"][0]))
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = report_path(args, "llmseqprompt_generation")
    write_report(report, out)
    print(json.dumps({k: v for k, v in report.items() if k not in ("command",)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
