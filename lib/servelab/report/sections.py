"""The report's sections, each read from one run folder. A section whose data the run does not have is None, so
the report never shows a heading over nothing (no agreement section without a comparison with vllm bench)."""

from __future__ import annotations

import html
from functools import cached_property
from pathlib import Path

import pandas as pd

from servelab.analyse import frames, plots
from servelab.manifest import read_manifest
from servelab.params import Params
from servelab.records import RequestRecord, read_requests
from servelab.report import tables
from servelab.report.display import Section, definition_list, table_html

STATUS_LABEL = {"ok": "OK", "warning": "Check", "unknown": "Unknown"}


class RunReport:
    """One run folder's files, read once, and the report's sections made from them."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.manifest = read_manifest(self.run_dir)
        self.summary = frames.summary_frame(self.run_dir)
        self.points = frames.points_frame(self.run_dir)
        self.samples = frames.memory_frame(self.run_dir)

    @cached_property
    def params(self) -> Params:
        return tables.run_params(self.run_dir)

    @cached_property
    def records(self) -> list[RequestRecord]:
        return read_requests(self.run_dir)

    @cached_property
    def requests(self) -> pd.DataFrame:
        return frames.requests_frame(self.run_dir)

    @property
    def measured(self) -> bool:
        """Whether any load point has a throughput: a run folder without requests.jsonl or summary.csv has none."""
        throughput = self.summary[self.summary["metric"] == "output_tok_s"] if not self.summary.empty else self.summary
        return not throughput.empty and throughput["value"].notna().any()

    def conditions(self) -> str:
        """The conditions every figure of this run shares: GPU, engines, prompt and output lengths."""
        engines = sorted({str(e.get("version")) for e in self.manifest.get("engines", {}).values()})
        sweep = self.params.sweep
        gpu = self.manifest.get("gpu")
        where = "a machine without a GPU" if gpu == "none" or not gpu else ", ".join(d["name"] for d in gpu.get("devices", []))
        return (
            f"Measured on {where} with {', '.join(engines)}; {sweep.input_tokens}-token prompts, "
            f"{sweep.output_tokens} output tokens, languages {', '.join(sweep.languages)}."
        )

    # ------------------------------------------------------------------------------------------ sections
    def header(self) -> Section:
        section = Section("What ran", slug="what-ran")
        description = self.params.description
        if description:
            section.text(description)
        return section.add(definition_list(tables.run_header(self.run_dir)))

    def answer(self) -> Section:
        rank_by = self.params.report.rank_by
        table = tables.ranking(self.summary, self.samples, rank_by, self.params)
        section = Section("Which deployment gives what", slug="answer")
        if table.empty or tables.ranking_label(rank_by) not in table:
            if self.measured:
                return section.text(
                    f"The params rank by {rank_by} (report.rank_by), which this run did not measure"
                    + (": goodput needs SLOs in the params." if rank_by == "goodput_req_s" else ".")
                )
            return section.text("No load point has finished yet: there is nothing to rank.")
        order = "highest first" if rank_by in tables.THROUGHPUTS else "lowest first"
        section.text(
            f"Deployments ranked by {tables.ranking_label(rank_by)}, {order} (params report.rank_by), each under its "
            "own load with its neighbours idle. " + self.conditions()
        )
        section.add(table_html(table))
        if "best goodput (req/s)" not in table and rank_by != "goodput_req_s":
            section.text("Goodput is not shown: no SLO was set for this run.")
        return section

    def validity(self) -> Section:
        section = Section("Can these numbers be trusted?", slug="validity")
        items = []
        for check in tables.validity(self.run_dir, self.summary, self.samples, self.points):
            items.append(
                f'<li class="check check-{check.status}"><span class="badge">{STATUS_LABEL[check.status]}</span>'
                f"<strong>{html.escape(check.check)}.</strong> {html.escape(check.finding)}"
                + (f'<br><span class="means">What it means: {html.escape(check.meaning)}</span>' if check.meaning else "")
                + f'<br><span class="todo">What to do: {html.escape(check.action)}</span></li>'
            )
        return section.add(f'<ul class="checks">{"".join(items)}</ul>')

    def performance(self) -> Section | None:
        if not self.measured:
            return None
        section = Section("Throughput and latency", slug="performance")
        section.add(plots.throughput(self.summary))
        section.add(plots.latency_percentiles(self.summary))
        return section.text(self.conditions())

    def groups(self) -> Section | None:
        table = tables.group_throughput(self.summary, self.params)
        if table.empty or not self.measured:
            return None
        section = Section("Throughput per co-location group", slug="groups")
        section.text(
            "Each group's deployments summed at the points where they were loaded together (each deployment's "
            "throughput over its own requests' span). Run on one host, those points load every deployment at once, "
            "every group's included. Under --cluster each group runs them in its own sweep, beside whatever the "
            "other groups run then, not in step with them."
        )
        return section.add(table_html(table))

    def memory(self) -> Section | None:
        if self.samples.empty:
            return None
        section = Section("Memory per model", slug="memory")
        section.add(plots.memory_timeline(self.samples, self.points))
        table = tables.memory(self.run_dir, self.samples, self.points)
        if not table.empty:
            section.add(table_html(table))
        section.text(*tables.memory_sentences(self.samples, table).splitlines())
        return section.text(
            self.conditions(),
            "The planner predicts each process's footprint from the params, under each framework's own rules. Idle is "
            "the footprint once loaded and outside every load point; peak is the most it held. Methods and the detail "
            "per load point: 03_gpu_memory and docs/memory.md."
        )

    def languages(self) -> Section | None:
        ok = self.requests[self.requests["ok"].astype(bool)] if not self.requests.empty else self.requests
        if ok.empty:
            return None
        return Section("Languages", slug="languages").add(plots.languages(self.requests))

    def agreement(self) -> Section | None:
        table = tables.agreement(self.run_dir)
        turns = tables.agreement_turns(self.run_dir)
        if table.empty and turns.empty:
            return None
        section = Section("Is the client right? Agreement with vllm bench serve", slug="agreement")
        if not table.empty:
            section.add(table_html(table))
        if not turns.empty:
            section.add(plots.agreement_turns(turns))
        return section.text(
            "Differences are servelab minus vLLM's benchmark, in percent of vLLM's. 'Received over server' is the "
            "tokens servelab received over the tokens the engine says it generated in the same window: 100 % means the "
            "client kept up."
        )

    def failures(self) -> Section | None:
        table = tables.failures(self.points, self.records)
        if table.empty:
            return None
        section = Section("Failures", slug="failures")
        section.text("Load points that failed, did not finish, or had failed requests; rates are of the measured requests.")
        return section.add(table_html(table))

    def load_points(self) -> Section | None:
        table = tables.load_points(self.summary)
        if table.empty or not self.measured:
            return None
        section = Section("Every load point", slug="load-points")
        section.text(f"{len(table)} load points; 'all under load' marks the points where every deployment was loaded at once.")
        return section.add(table_html(table))

    def sections(self) -> list[Section]:
        """Every section this run has data for, in reading order."""
        made = [self.header(), self.answer(), self.validity(), self.performance(), self.groups(), self.memory(), self.languages(),
                self.agreement(), self.failures(), self.load_points()]
        return [section for section in made if section is not None]
