"""The client side of `gateway upload`: what to send (files), where each upload stands
across runs (state), sending it with tuspy (uploader, retry), proving it arrived intact
(check) and showing it (progress). No module here imports the server's packages except
the pure manifest and JWS code."""
