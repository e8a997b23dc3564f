"""A workaround for Gradio's MCP server, applied by ``python app.py --mcp``.

Gradio 6.31 (the version requirements.txt pins; ``gradio.mcp.GradioMCPServer``, a
private class) makes two things of the endpoints' outputs that MCP clients can't use:

- without progress notifications it takes a multi-output endpoint's whole output tuple
  for one output (and then fails to drop its State: "pop index out of range");
- it writes JSON outputs (the segments) as Python text (``str(dict)``).

``fix_mcp_outputs`` patches the class: the outputs one by one, as its progress path
gives them; JSON outputs as JSON, and a list of files (the downloads) as their URLs.
Images (the overlays) stay images. It does nothing on a Gradio without those two
methods (another version), so remove it once Gradio's own output is right.
``tests/test_api.py`` pins what clients get.
"""

from __future__ import annotations

import json


def fix_mcp_outputs() -> None:
    """Patch ``GradioMCPServer`` (once) as the module docstring says."""
    from gradio.mcp import GradioMCPServer
    from gradio.processing_utils import add_root_url
    from gradio_client.utils import is_file_obj_with_meta

    run = getattr(GradioMCPServer, "_execute_tool_without_progress", None)
    postprocess = getattr(GradioMCPServer, "postprocess_output_data", None)
    if run is None or postprocess is None or getattr(run, "fixed", False):  # another Gradio, or done
        return

    async def without_progress(self, job):
        outputs = await run(self, job)
        return list(outputs[0]) if len(outputs) == 1 and isinstance(outputs[0], tuple) else outputs

    def as_json(value):
        if isinstance(value, list) and value and all(is_file_obj_with_meta(item) for item in value):
            return json.dumps([item["url"] for item in value])  # the downloads, as URLs
        if isinstance(value, dict | list) and not is_file_obj_with_meta(value):
            return json.dumps(value)
        return value

    def postprocess_json(self, data, root_url):
        data = add_root_url(data, root_url, None)
        return postprocess(self, [as_json(value) for value in data], root_url)

    without_progress.fixed = True
    GradioMCPServer._execute_tool_without_progress = without_progress
    GradioMCPServer.postprocess_output_data = postprocess_json
