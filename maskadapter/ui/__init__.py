"""The app layer: what the service's data becomes for people, and the Gradio glue.

- ``present``: Markdown, table rows, messages and status text (no Gradio);
- ``endpoint_docs``: the API endpoints' docstrings, which Gradio turns into the API page
  and the MCP tools' descriptions (no Gradio);
- ``events``: the Gradio side of events: uploaded photos, failures as short messages,
  progress, stopping a run (``Runs``), the queue, and GPU time on a ZeroGPU Space;
- ``explore``: the Automatic tab's explorable picture (a layer per segment; no Gradio);
- ``handlers``: the functions the app's events and endpoints call;
- ``wiring``: the wiring the tabs share (API endpoints, runs with Stop, upload checks,
  tables, the Advanced settings);
- ``page``: the page's style and script;
- ``mcp_outputs``: a workaround for Gradio's MCP server.

``app.py`` holds the page's layout (and the photo and segment components) and wires
these to it. ``import maskadapter``
imports none of this (nor Gradio).
"""
