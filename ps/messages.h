#pragma once
// Encoding and decoding of parameter-server messages (ps/wire.proto, docs/ps-protocol.md).
//
// Frame: u32 header_bytes (LE) | Header | zero padding to a multiple of 8 | payload.
// The padding puts the payload at an 8-byte aligned offset of the message buffer, so the
// server can write pulled rows straight into the reply.
// Byte order: payload arrays are little-endian, which is the host order on every platform we
// build for (checked at compile time); a big-endian host would need byte swapping here.
//
// Thread-safety: free functions.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ps/wire.pb.h"

namespace t2d::ps {

inline constexpr uint32_t kWireVersion = 1;
// Tags on the transport: requests go worker -> server, replies server -> worker.
inline constexpr int kRequestTag = 101;
inline constexpr int kReplyTag = 102;
// A header larger than this is malformed (headers carry counts and short strings only).
inline constexpr uint32_t kMaxHeaderBytes = 1 << 20;

struct Frame {
  Header header;
  absl::string_view payload;  // points into the decoded buffer
};

// Offset of the payload for a header of `header_bytes` bytes.
size_t PayloadOffset(size_t header_bytes);

// A message with `header` and room for `payload_bytes` bytes of payload (zero-filled);
// *payload_offset tells where the payload starts.
std::string EncodeFrame(const Header& header, size_t payload_bytes, size_t* payload_offset);
// The size of a message with `header` and `payload_bytes` bytes of payload.
size_t FrameBytes(const Header& header, size_t payload_bytes);
// As the first EncodeFrame, built in `buffer` (resized; for example from
// comm::Transport::NewBuffer) and with the payload's bytes left unspecified: the caller
// overwrites all of them. The length prefix, header and padding are written in full.
std::string EncodeFrameIn(std::string buffer, const Header& header, size_t payload_bytes, size_t* payload_offset);
// A message with `header` and `payload` copied in.
std::string EncodeFrame(const Header& header, absl::string_view payload = {});

// Checks the framing and the header: length prefix within the buffer, header parses, version
// is kWireVersion, padding present. The payload is not interpreted here.
// Errors: InvalidArgument describing what is wrong.
absl::StatusOr<Frame> DecodeFrame(absl::string_view bytes);

// A reply header for `request` (same type and request id) carrying `status`.
Header ReplyHeader(const Header& request, const absl::Status& status);

// The status carried by a reply header.
absl::Status ReplyStatus(const Header& reply);

}  // namespace t2d::ps
