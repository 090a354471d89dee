// Fuzzes the parameter-server framing (ps/messages.h) as the server applies it: DecodeFrame
// on the received bytes, then the reply path (ReplyHeader, EncodeFrame, ReplyStatus) and a
// re-encoding of the decoded header and payload, which must decode again to the same frame.
// ShardServer's per-request payload checks are private; ps_test covers them with crafted
// cases (MalformedRequestsGetErrorRepliesAndServingContinues).

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/status/status.h"
#include "ps/messages.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The server decodes from its own (aligned) std::string buffer; so do we.
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto frame = t2d::ps::DecodeFrame(bytes);
  const t2d::ps::Header request = frame.ok() ? frame->header : t2d::ps::Header();
  const absl::Status status = frame.ok() ? absl::OkStatus() : frame.status();
  const std::string reply = t2d::ps::EncodeFrame(t2d::ps::ReplyHeader(request, status));
  auto decoded_reply = t2d::ps::DecodeFrame(reply);
  if (!decoded_reply.ok()) std::abort();  // our own encoding must always decode
  (void)t2d::ps::ReplyStatus(decoded_reply->header);
  (void)t2d::ps::ReplyStatus(request);  // a request read as a reply: any status code
  if (!frame.ok()) return 0;
  const std::string again = t2d::ps::EncodeFrame(frame->header, frame->payload);
  auto round_trip = t2d::ps::DecodeFrame(again);
  if (!round_trip.ok() || round_trip->payload != frame->payload) std::abort();
  return 0;
}
