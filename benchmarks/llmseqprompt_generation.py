"""LLMSeqPrompt's evaluation cost: how ``llmseqprompt_num_samples`` titles per user are generated.

Three ways, on the same users' test histories, interleaved, each title drawn from the same seeded
stream in every way (``RowSampler``):

  - ``alone_eos``: ``generate`` alone (it reads every prompt once per sample), a title ends at EOS;
  - ``shared_eos``: each prompt read once, its keys and values repeated for its samples
    (``llmseqprompt_shared_prefill: True``), a title ends at EOS;
  - ``shared_newline``: the same, and a title also ends at a newline token (the default).

The report has seconds per user (medians over ``--repeats``), tokens per second (the prompt's
tokens once per user plus the titles' tokens, the same work for all three, so the ratio of two
ways' tokens per second is the ratio of their times), the tokens each way really fed the LLM,
and whether the ways wrote the same titles. The LoRA adapters are as built (B = 0: the base LLM),
which changes what is written, not what a token costs.

    python benchmarks/llmseqprompt_generation.py --dataset=ml-100k --users=16 --repeats=1
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

    by_user = {}  # the first --users test users, in loader order; one history each
    for batch in test_data:
        interaction = batch[0]
        rows, _ = history_windows(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], model.history_len)
        for user, history in zip(interaction[model.USER_ID].tolist(), rows):
            if len(by_user) < args.users:
                by_user.setdefault(user, list(history))
        if len(by_user) >= args.users:
            break
    histories = list(by_user.values())
    chunks = [histories[s : s + model.llm_batch_size] for s in range(0, len(histories), model.llm_batch_size)]
    samples = model.num_samples if model.temperature > 0 else 1

    eos_only = [model.eos_id]
    newline_stop = list(model.stop_ids)
    ways = {"alone_eos": (False, eos_only), "shared_eos": (True, eos_only), "shared_newline": (True, newline_stop)}

    def generate(shared, stops):
        model.shared_prefill, model.stop_ids = shared, stops
        titles, generated, fed, prompt_tokens = [], 0, 0, 0
        start_time = time.perf_counter()
        for chunk in chunks:
            prompts = [model.prompt_ids(h) for h in chunk]
            with torch.no_grad():
                output = model._generate(prompts, samples)
            width = max(map(len, prompts))
            new = output[:, width:]
            steps = new.shape[1]
            # a title's tokens: up to its first EOS or newline, the same work for every way
            stop = torch.isin(new, torch.tensor(newline_stop))
            ended = stop.int().cumsum(1)
            generated += int(((ended == 0) | ((ended == 1) & stop)).sum())
            prompt_tokens += sum(map(len, prompts))
            # what the LLM was fed (padding included): the prompt once per user (shared) or per
            # sample (alone), then one token per sequence per decoding step
            fed += width * len(chunk) * (1 if shared and samples > 1 else samples) + steps * len(chunk) * samples
            titles += model.decode_titles(new)
        return time.perf_counter() - start_time, titles, generated, fed, prompt_tokens

    runs = {name: [] for name in ways}
    outputs = {}
    for repeat in range(args.repeats):
        for name, (shared, stops) in ways.items():
            seconds, *rest = generate(shared, stops)
            runs[name].append(seconds)
            outputs[name] = rest
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {seconds:.1f} s", flush=True)
    model.stop_ids = newline_stop

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
        _, generated, fed, prompt_tokens = outputs[name]
        median = statistics.median(seconds)
        report[name] = {
            "seconds_all": seconds, "seconds_median": median, "seconds_per_user": median / len(histories),
            "prompt_tokens": prompt_tokens, "title_tokens": generated, "tokens_fed_to_llm": fed,
            "tokens_per_second": (prompt_tokens + generated) / median,
        }
    base = report["alone_eos"]["seconds_median"]
    report["speedup_over_alone_eos"] = {name: base / report[name]["seconds_median"] for name in ways}
    report["same_titles_as_alone_eos"] = {name: statistics.mean(
        a == b for a, b in zip(outputs[name][0], outputs["alone_eos"][0])) for name in ways}
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = report_path(args, "llmseqprompt_generation")
    write_report(report, out)
    print(json.dumps({k: v for k, v in report.items() if k not in ("command",)}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
