"""The protocol layers a connection goes through; `dispatch` alone knows them all."""
