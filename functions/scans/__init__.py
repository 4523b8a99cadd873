# Before FastAPI is imported: its models, and ours, build when first used (shared/http/deferred_models.py).
from shared.http import deferred_models  # noqa: F401
