"""One optional progress bar for the long loops (tqdm when installed and wanted, else None)."""


def progress_bar(total: int, enabled: bool, unit: str = "step", **kwargs):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit=unit, leave=False, **kwargs)
