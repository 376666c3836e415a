module github.com/zmqhttp/zmqhttp

go 1.26.0

require (
	github.com/go-zeromq/zmq4 v0.17.0
	github.com/gorilla/mux v1.8.1
	github.com/ugorji/go/codec v1.3.2
)

require (
	github.com/go-zeromq/goczmq/v4 v4.2.2 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
)
