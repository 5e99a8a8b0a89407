"""An app module that fails at import (as a syntax or config error would)."""

raise RuntimeError("broken_app cannot be imported")
