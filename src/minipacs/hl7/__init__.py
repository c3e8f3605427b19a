"""The HL7 v2 edge: MLLP framing and the listener (mllp.py), parsing and escapes (message.py),
acknowledgements (ack.py), and orders -> the worklist (orders.py), where the core's refusals
become HL7 acknowledgement codes. The core never speaks HL7 codes."""
