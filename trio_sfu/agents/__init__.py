"""Agent workers (`livekit-agents`) and their dispatch into rooms.

`endpoint` speaks the worker protocol on `/agent` (protobuf `WorkerMessage`/`ServerMessage`),
`workers` keeps the registered workers and picks one for a job by load, `dispatcher` turns room
events and the AgentDispatchService into jobs and follows each job to its end, `tokens` mints
the participant token a job's agent joins with. The layer sits above `signal` (it hears the
room registry's events; rooms never call it) and below `api` (the HTTP front and Twirp use it).
"""
