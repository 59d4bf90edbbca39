"""The `tools:` section: tool and retrieval use from records' `tools` and `retrieval`."""

from __future__ import annotations

from pydantic import Field

from lookout.monitor.config.base import Section


class ToolsConfig(Section):
    enabled: bool = True  # records without tools or retrieval cost nothing either way
    max_names: int = Field(default=20, ge=1)  # tool names past it are counted under `other`
