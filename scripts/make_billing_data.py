"""Rebuild the course data in data/billing/ from data/billing/cpt_source.json (deterministic)."""
from helpers.course.billing import BILLING_DIR, write_datasets

if __name__ == "__main__":
    for name, count in write_datasets().items():
        print(f"{BILLING_DIR / name}.jsonl: {count} lines")
