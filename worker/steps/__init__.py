"""The steps of a job's lifecycle as the worker runs them, one module each: submit, poll,
store and cancel, over `base` (shared dependencies and moves).

Each step reads the job record, does at most one provider or storage action, and moves the
record on with a compare-and-set. A step that runs twice (at-least-once delivery) finds the
record already moved and does nothing, or repeats an action that is harmless to repeat (a
status call, an upload of the same bytes to the same key). Steps never sleep: what must
happen later is sent as a new message with a countdown through the dispatcher
(worker/dispatch.py).
"""
