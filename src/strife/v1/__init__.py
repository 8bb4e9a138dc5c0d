"""Generated gRPC API of Strife (package strife.v1). Do not edit."""
