"""The application shell: the command line, the embedded stack and the demo.

It may import everything; nothing in the core, `rtml.pipelines` or `rtml.serving` imports it.
"""
