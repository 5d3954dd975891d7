"""The Q&A job's quality checks (critic, judge, relevance, dedup) and what they share."""
