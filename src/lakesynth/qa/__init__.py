"""The Q&A job: seeds, questions, answers, top-up, the chat format, preference pairs, export and evaluation."""
