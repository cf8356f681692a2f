// SignalPipe: turns SIGTERM/SIGINT into a readable file descriptor, so an event loop (zmq_poll or
// Asio) sees a stop request as an ordinary event instead of being interrupted mid-turn.
// Classic self-pipe: the handler only write()s the signal number, which is async-signal-safe.
// The write end has to be reachable from the handler, hence the one process-wide slot; creating
// a second SignalPipe while one is alive is a bug and aborts.
#pragma once

namespace evald {

class SignalPipe {
 public:
  SignalPipe();   // installs handlers for SIGTERM and SIGINT; throws std::system_error on failure
  ~SignalPipe();  // restores the default handlers and closes the pipe
  SignalPipe(const SignalPipe&) = delete;
  SignalPipe& operator=(const SignalPipe&) = delete;

  int fd() const { return read_fd_; }  // readable once a signal has arrived
  // Returns the number of a signal that arrived, or 0 if none is pending. Never blocks.
  int take() const;

 private:
  int read_fd_ = -1;
  int write_fd_ = -1;
};

}  // namespace evald
