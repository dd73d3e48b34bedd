"""``fedgen report``: rewrite a finished run's report, or build (and publish) a suite's."""

from __future__ import annotations

import json
from pathlib import Path

from fedgen.core.errors import FedgenError
from fedgen.experiment.registry import report_of
from fedgen.experiment.rundir import RunDir
from fedgen.report.publish import publish_suite
from fedgen.report.suite import write_suite_report
from fedgen.report.suite_parts import is_suite


def cmd_report(args) -> int:
    rd = RunDir(Path(args.run))
    if not (rd.path / "summary.json").is_file() and is_suite(rd.path):
        print(
            publish_suite(rd.path, args.publish, replace=args.replace)
            if args.publish
            else write_suite_report(rd.path)
        )
        return 0
    if args.publish:
        raise FedgenError(f"--publish: {rd.path} is not a suite or compare dir")
    if not (rd.path / "summary.json").is_file():
        raise FedgenError(f"{rd.path} has no summary.json (is the run finished? resume it with --resume)")
    summary = json.loads((rd.path / "summary.json").read_text())
    pers_file = rd.path / "personalization.json"
    pers = json.loads(pers_file.read_text()) if pers_file.is_file() else None
    report = report_of(summary)
    print(report.write_report(rd.path, summary, rd.read_metrics(), pers))
    print(report.result_table(summary))
    return 0
