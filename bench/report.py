"""Results: a JSON file per run, the table in bench/README.md, and PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
MARK_BEGIN = "<!-- results:begin -->"
MARK_END = "<!-- results:end -->"


def write_json(results: dict[str, Any], name: str) -> Path:
    path = BENCH / "results" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def _fmt(value: Any, unit: str = "") -> str:
    return (
        "-"
        if value is None
        else f"{value:,}{unit}"
        if isinstance(value, int)
        else (f"{value:,.2f}{unit}" if isinstance(value, float) else f"{value}{unit}")
    )


def markdown(results: dict[str, Any], json_name: str) -> str:
    lines = [
        f"Run `{json_name}` ({results['date']}, commit `{results['commit']}`, "
        f"{results['cpus']} CPUs{', quick' if results['quick'] else ''}).",
        "",
    ]
    issuance = results.get("issuance")
    if issuance:
        lines += [
            "**Issuance** (`GET database/creds/:role` over HTTP, client in its own "
            "process; raw = the same database work with asyncpg/aiomysql):",
            "",
            "| target | concurrency | broker req/s | raw req/s | ratio | broker p50 / p99 ms "
            "| raw p50 / p99 ms | broker errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, label in (("pg", "PostgreSQL (group role)"), ("mysql", "MariaDB")):
            for row in issuance[key]:
                b, r = row["broker"], row["raw"]
                lines.append(
                    f"| {label} | {row['concurrency']} | {_fmt(b['throughput'])} | "
                    f"{_fmt(r['throughput'])} | {_fmt(row['ratio'])} | "
                    f"{_fmt(b['p50_ms'])} / {_fmt(b['p99_ms'])} | "
                    f"{_fmt(r['p50_ms'])} / {_fmt(r['p99_ms'])} | {b['errors']} |"
                )
        serial = issuance["pg_tables_raw_serialised"]
        concurrent = issuance["pg_tables_raw_concurrent_8"]
        lines += [
            "",
            "Overhead at concurrency 1 (broker p50 - raw p50): PostgreSQL "
            f"{_fmt(issuance['pg_overhead_c1_ms'])} ms, MariaDB "
            f"{_fmt(issuance['mysql_overhead_c1_ms'])} ms.",
            "",
            "**Vault's per-table GRANT** (`GRANT SELECT ON ALL TABLES IN SCHEMA public`): "
            f"raw serialised {_fmt(serial['throughput'])} req/s; raw at concurrency 8: "
            f"{concurrent['errors']} errors of {concurrent['errors'] + concurrent['ok']}.",
            "",
            "| concurrency | broker req/s | errors | ratio to serialised raw |",
            "| --- | --- | --- | --- |",
        ]
        for row in issuance["pg_tables"]:
            lines.append(
                f"| {row['concurrency']} | {_fmt(row['broker']['throughput'])} | "
                f"{row['broker']['errors']} | {_fmt(row['ratio_to_serialised'])} |"
            )
    for key in ("storm", "storm_two_nodes"):
        st = results.get(key)
        if st:
            lines += [
                "",
                f"**Revocation storm, {st['nodes']} node(s)**: {st['leases']:,} leases "
                f"expiring within one second; all dropped "
                f"{_fmt(st['seconds_from_first_expiry_to_all_dropped'])} s after the first "
                f"expiry ({_fmt(st['broker_rate_per_s'])}/s; raw DROP ROLE at concurrency "
                f"16: {_fmt(st['raw_drop_rate_per_s'])}/s; ratio {_fmt(st['ratio_to_raw'])})"
                f"; lag p50 {_fmt(st['lag_p50_s'])} s, p99 {_fmt(st['lag_p99_s'])} s; "
                f"roles left {st['roles_left']}.",
            ]
    two = results.get("two_nodes")
    if two:
        b = two["broker"]
        lines += [
            "",
            f"**Two nodes**, PostgreSQL issuance at concurrency {two['concurrency']}: "
            f"{_fmt(b['throughput'])} req/s, p50 {_fmt(b['p50_ms'])} ms, p99 "
            f"{_fmt(b['p99_ms'])} ms, {b['errors']} errors.",
        ]
    sc = results.get("scale")
    if sc:
        lines += [
            "",
            f"**Scale**: storage with {sc['rows']:,} lease rows (90 % revoked) "
            "against an empty one:",
            "",
            "| storage | start-up s | RSS MB | issuance p50 ms | sweep of 1,000 s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for label in ("empty", "full"):
            row = sc[label]
            lines.append(
                f"| {label} | {_fmt(row['startup_s'])} | {_fmt(row['rss_mb'])} | "
                f"{_fmt(row['issuance_p50_ms'])} | {_fmt(row['sweep_1000_s'])} |"
            )
    hp = results.get("http_parser")
    if hp:
        lines += [
            "",
            f"**HTTP parser** ({hp['load_generator']}, cheap path): as shipped (Python "
            f"request parser) {_fmt(hp['shipped_rps'])} req/s, aiohttp without C extensions "
            f"{_fmt(hp['all_python_rps'])} req/s "
            f"(x{_fmt(hp['ratio_shipped_over_all_python'])}); LIST errors "
            f"{hp['shipped_list_errors']}.",
        ]
    auth = results.get("auth_overhead")
    if auth:
        lines += [
            "",
            f"**Security layer** (lookup-self, medians of alternating rounds): configured root "
            f"token {_fmt(auth['root_rps'])} req/s; stored service token with a policy "
            f"{_fmt(auth['service_token_rps'])} req/s (x{_fmt(auth['service_token_ratio'])}); "
            f"root with a file audit device {_fmt(auth['root_audited_rps'])} req/s "
            f"(x{_fmt(auth['audited_ratio'])}). Issuance at concurrency 32 with the service "
            f"token: x{_fmt(auth['issue_ratio'])} of the root token's.",
        ]
    vc = results.get("verifier_cpu")
    if vc:
        plain, verifier = vc["plaintext"], vc["verifier"]
        lines += [
            "",
            f"**Password verifiers** (PostgreSQL target CPU per issued login, concurrency "
            f"{vc['concurrency']}, alternating rounds): `password_authentication=password` "
            f"{_fmt(plain['db_cpu_ms_per_login'])} ms (broker "
            f"{_fmt(plain['broker_cpu_ms_per_login'])} ms), `scram-sha-256` "
            f"{_fmt(verifier['db_cpu_ms_per_login'])} ms (broker "
            f"{_fmt(verifier['broker_cpu_ms_per_login'])} ms): x{_fmt(vc['db_cpu_ratio'])} "
            f"on the database server; errors {plain['errors']} / {verifier['errors']}. "
            f"Bare CREATE ROLE, server CPU: no password "
            f"{_fmt(vc['raw_create_role_db_cpu_ms']['no_password'])} ms, password "
            f"{_fmt(vc['raw_create_role_db_cpu_ms']['plaintext'])} ms, verifier "
            f"{_fmt(vc['raw_create_role_db_cpu_ms']['verifier'])} ms (PostgreSQL checks a "
            f"given verifier against the empty password: the same PBKDF2).",
        ]
    return "\n".join(lines)


def update_readme(results: dict[str, Any], json_name: str, charts: list[Path]) -> None:
    readme = BENCH / "README.md"
    text = readme.read_text()
    start, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    images = "".join(f"\n![{p.stem}](results/{p.name})\n" for p in charts)
    body = markdown(results, json_name) + "\n" + images
    readme.write_text(text[:start] + "\n" + body + text[end:])


def charts(results: dict[str, Any], name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    issuance = results.get("issuance")
    if issuance:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for key, label in (("pg", "PostgreSQL"), ("mysql", "MariaDB")):
            xs = [row["concurrency"] for row in issuance[key]]
            for side, style in (("broker", "-o"), ("raw", "--s")):
                axes[0].plot(
                    xs,
                    [row[side]["throughput"] for row in issuance[key]],
                    style,
                    label=f"{label} {side}",
                )
                axes[1].plot(
                    xs,
                    [row[side]["p99_ms"] for row in issuance[key]],
                    style,
                    label=f"{label} {side}",
                )
        for ax, title in ((axes[0], "issuance throughput (req/s)"), (axes[1], "p99 latency (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = BENCH / "results" / f"{name}-issuance.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    storms = [results[k] for k in ("storm", "storm_two_nodes") if results.get(k)]
    if storms:
        fig, ax = plt.subplots(figsize=(7, 4))
        for st in storms:
            times = [point[0] for point in st["timeline"]]
            counts = [point[1] for point in st["timeline"]]
            ax.plot(times, counts, label=f"{st['nodes']} node(s)")
        ax.axvspan(0, 1, color="orange", alpha=0.15, label="leases expiring")
        ax.set_xlabel("seconds since the first expiry")
        ax.set_ylabel("leases revoked")
        ax.set_title(f"revocation storm: {storms[0]['leases']:,} leases")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = BENCH / "results" / f"{name}-storm.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
