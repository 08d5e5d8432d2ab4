"""The operator's page at `/`: what is served, what failed to load, how each command is doing, and a form to try one.

One self-contained HTML document, built per visit from the registry and the request
metrics: no asset from anywhere else, so it works offline and behind any firewall.
The form posts to `/v1/do/...` like Arena does and shows the envelope it gets back.
"""

from __future__ import annotations

import html
import json
import re
import time
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.manifest import Command, Parameter

if TYPE_CHECKING:
    from gateway.metrics import CommandStats, RequestMetrics
    from gateway.registry import Registry
    from gateway.workers import Pools


def render_page(registry: Registry, metrics: RequestMetrics, pools: Pools, started: float, api_key_set: bool) -> str:
    commands = sorted(registry.commands.values(), key=lambda command: command.id)
    rows = "".join(_command_row(command, metrics.command_stats(command.id), pools) for command in commands)
    uptime = _duration(time.monotonic() - started)
    summary = (
        f"{len(commands)} command{'s' if len(commands) != 1 else ''} from {len(registry.manifests)} "
        f"manifest{'s' if len(registry.manifests) != 1 else ''}, {len(registry.failures)} failed; up {uptime}"
    )
    return _PAGE.format(
        version=html.escape(__version__),
        summary=html.escape(summary),
        rows=rows or '<tr><td colspan="6">No command is loaded.</td></tr>',
        failures=_failures(registry),
        options="".join(_option(command) for command in commands),
        templates=_script_json({command.id: _template(command.parameters) for command in commands}),
        key_note=(
            "<p class='note'>This gateway needs its API key: the browser sends the one you signed in with.</p>"
            if api_key_set
            else ""
        ),
    )


def _command_row(command: Command, stats: CommandStats, pools: Pools) -> str:
    error_rate = f"{stats.errors / stats.requests:.0%}" if stats.requests else "-"
    latency = f"{_ms(stats.p50)} / {_ms(stats.p95)}" if stats.requests else "-"
    return (
        f"<tr data-command='{html.escape(command.id, quote=True)}'>"
        f"<td><code>{html.escape(command.id)}</code><br><small class='mode'>{_mode(command, pools)}</small></td>"
        f"<td>{_prose(command.description or '')}</td>"
        f"<td>{_parameters(command.parameters)}</td>"
        f"<td class='num requests'>{stats.requests}</td>"
        f"<td class='num errors'>{error_rate}</td>"
        f"<td class='num latency'>{latency}</td></tr>"
    )


def _mode(command: Command, pools: Pools) -> str:
    if command.workers is None:
        return "spawn mode"
    pool = pools.pools.get(command.pool_key)
    if pool is None:
        return "worker mode, not started yet"
    alive = len(pool.workers)
    text = f"worker mode, {alive} worker{'s' if alive != 1 else ''} alive"
    if pool.restarts:
        text += f", {pool.restarts} restart{'s' if pool.restarts != 1 else ''} after early exits"
    wait = pool.next_start_in()
    if wait > 0:
        text += f"; next start in {wait:.1f} s"
    return text


def _parameters(parameters: tuple[Parameter, ...]) -> str:
    if not parameters:
        return "<small>none declared</small>"
    items = []
    for parameter in parameters:
        facts = [parameter.type, "required" if parameter.required else "optional"]
        if parameter.has_default:
            facts.append(f"default {json.dumps(parameter.default)}")
        if parameter.secret:
            facts.append("secret")
        described = f": {_prose(parameter.description)}" if parameter.description else ""
        items.append(
            f"<li><code>{html.escape(parameter.id)}</code> ({html.escape(', '.join(facts))}){described}"
            f"{_schema(parameter)}</li>"
        )
    return "<ul>" + "".join(items) + "</ul>"


def _prose(text: str) -> str:
    """A manifest's description as HTML: escaped, with `backquoted` words shown as code, as authors mean them."""
    return _BACKQUOTED.sub(r"<code>\1</code>", html.escape(text))


_BACKQUOTED = re.compile(r"`([^`]+)`")


def _schema(parameter: Parameter) -> str:
    """The parameter's schema in brief: its start on one line, the whole of it on hover."""
    if parameter.schema is None:
        return ""
    text = json.dumps(parameter.schema, ensure_ascii=False, separators=(",", ":"))
    brief = text if len(text) <= _SCHEMA_SHOWN else text[: _SCHEMA_SHOWN - 3] + "..."
    return f"<br><code class='schema' title='{html.escape(text, quote=True)}'>{html.escape(brief)}</code>"


_SCHEMA_SHOWN = 100


def _failures(registry: Registry) -> str:
    if not registry.failures:
        return "<p id='no-failures'>Every manifest loaded.</p>"
    items = []
    for failure in registry.failures:
        problems = "".join(f"<li>{html.escape(str(problem))}</li>" for problem in failure.problems)
        kept = "<p class='kept'>Its last good version is still served.</p>" if failure.path in registry.kept else ""
        items.append(f"<li class='failure'><code>{html.escape(str(failure.path))}</code><ul>{problems}</ul>{kept}</li>")
    return "<ul id='failures'>" + "".join(items) + "</ul>"


def _option(command: Command) -> str:
    return f"<option value='{html.escape(command.id, quote=True)}'>{html.escape(command.id)}</option>"


def _template(parameters: tuple[Parameter, ...]) -> dict[str, Any]:
    """Parameters to start the form from: defaults, and an empty value of the right type for the rest."""
    return {p.id: p.default if p.has_default else _empty(p) for p in parameters if p.required or p.has_default}


def _empty(parameter: Parameter) -> Any:
    declared = parameter.schema.get("type") if parameter.schema is not None else None
    if declared in _EMPTY_OF_SCHEMA:
        return _EMPTY_OF_SCHEMA[declared]
    return _EMPTY[parameter.type]


_EMPTY: dict[str, Any] = {"str": "", "int": 0, "bool": False, "any": None}
_EMPTY_OF_SCHEMA: dict[str, Any] = {"array": [], "object": {}, "number": 0}


def _script_json(value: Any) -> str:
    # Inside <script>, "</" could end the element early: JSON allows it escaped.
    return json.dumps(value).replace("</", "<\\/")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>connector-gateway</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #1b1f24; }}
h1 {{ font-size: 1.5rem; margin-bottom: 0; }} h2 {{ font-size: 1.15rem; margin-top: 2rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; vertical-align: top; padding: .4rem .6rem; border-bottom: 1px solid #d0d7de; }}
td ul {{ margin: 0; padding-left: 1.1rem; }} .num {{ text-align: right; white-space: nowrap; }}
code {{ font: 13px ui-monospace, monospace; }} small, .note {{ color: #57606a; }}
.failure {{ color: #a40e26; }} textarea {{ width: 100%; font: 13px ui-monospace, monospace; }}
pre {{ background: #f6f8fa; padding: .8rem; overflow: auto; }} button {{ padding: .3rem 1rem; }}
</style></head>
<body>
<h1>connector-gateway</h1>
<p class="note">version {version} &middot; <span id="summary">{summary}</span> &middot;
<a href="/metrics">metrics</a> &middot; <a href="/v1/commands">/v1/commands</a></p>
<h2>Commands</h2>
<table id="commands"><thead><tr><th>command</th><th>description</th><th>parameters</th>
<th class="num">requests</th><th class="num">errors</th><th class="num">p50 / p95</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>Manifests that failed</h2>
{failures}
<h2>Try a command</h2>
{key_note}
<form id="try">
<p><label>Command <select id="command" name="command">{options}</select></label></p>
<p><label for="params">Parameters (a JSON object)</label><br>
<textarea id="params" name="params" rows="8" spellcheck="false"></textarea></p>
<p><button type="submit">Run</button> <span id="status"></span></p>
</form>
<pre id="answer"></pre>
<script>
const templates = {templates};
const form = document.getElementById("try"), command = document.getElementById("command");
const params = document.getElementById("params"), answer = document.getElementById("answer");
const status = document.getElementById("status");
function fill() {{ params.value = JSON.stringify(templates[command.value] || {{}}, null, 2); }}
command.addEventListener("change", fill);
fill();
form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  let body;
  try {{ body = JSON.stringify(JSON.parse(params.value)); }}
  catch (error) {{ status.textContent = "The parameters are not JSON: " + error.message; return; }}
  status.textContent = "running...";
  answer.textContent = "";
  const path = command.value.split("/").map(encodeURIComponent).join("/");
  let response, text;
  try {{
    // From the origin: a page opened as http://user:key@host/ has a base URL fetch() refuses.
    response = await fetch(location.origin + "/v1/do/" + path, {{
      method: "POST", headers: {{"Content-Type": "application/json"}}, body: body, credentials: "same-origin"}});
    text = await response.text();
  }} catch (error) {{ status.textContent = "The request failed: " + error.message; return; }}
  status.textContent = "HTTP " + response.status + ", request id " + response.headers.get("X-Request-Id");
  try {{ answer.textContent = JSON.stringify(JSON.parse(text), null, 2); }}
  catch (error) {{ answer.textContent = text; }}
}});
</script>
</body></html>
"""
