#include "ps/messages.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace t2d::ps {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format assumes a little-endian host");

size_t PayloadOffset(size_t header_bytes) { return (4 + header_bytes + 7) / 8 * 8; }

std::string EncodeFrame(const Header& header, size_t payload_bytes, size_t* payload_offset) {
  // An empty buffer grows by zero-filling, so the payload comes out zeroed.
  return EncodeFrameIn(std::string(), header, payload_bytes, payload_offset);
}

size_t FrameBytes(const Header& header, size_t payload_bytes) {
  return PayloadOffset(header.ByteSizeLong()) + payload_bytes;
}

std::string EncodeFrameIn(std::string buffer, const Header& header, size_t payload_bytes, size_t* payload_offset) {
  const size_t header_bytes = header.ByteSizeLong();
  const size_t offset = PayloadOffset(header_bytes);
  buffer.resize(offset + payload_bytes);
  const uint32_t n = static_cast<uint32_t>(header_bytes);
  std::memcpy(buffer.data(), &n, 4);
  header.SerializeToArray(buffer.data() + 4, static_cast<int>(header_bytes));
  std::memset(buffer.data() + 4 + header_bytes, 0, offset - 4 - header_bytes);  // the padding
  *payload_offset = offset;
  return buffer;
}

std::string EncodeFrame(const Header& header, absl::string_view payload) {
  size_t offset = 0;
  std::string out = EncodeFrame(header, payload.size(), &offset);
  if (!payload.empty()) std::memcpy(out.data() + offset, payload.data(), payload.size());
  return out;
}

absl::StatusOr<Frame> DecodeFrame(absl::string_view bytes) {
  if (bytes.size() < 4) {
    return absl::InvalidArgumentError(absl::StrCat("message of ", bytes.size(), " bytes is shorter than its 4-byte length prefix"));
  }
  uint32_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes.data(), 4);
  if (header_bytes > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_bytes, " exceeds the limit of ", kMaxHeaderBytes));
  }
  const size_t offset = PayloadOffset(header_bytes);
  if (offset > bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("header length ", header_bytes, " runs past the end of a ", bytes.size(),
                                                   "-byte message"));
  }
  Frame f;
  if (!f.header.ParseFromArray(bytes.data() + 4, static_cast<int>(header_bytes))) {
    return absl::InvalidArgumentError("header does not parse as t2d.ps.Header");
  }
  if (!f.header.has_version() || f.header.version() != kWireVersion) {
    return absl::InvalidArgumentError(absl::StrCat("wire version ", f.header.version(), " is not supported (expected ",
                                                   kWireVersion, ")"));
  }
  f.payload = bytes.substr(offset);
  return f;
}

Header ReplyHeader(const Header& request, const absl::Status& status) {
  Header h;
  h.set_version(kWireVersion);
  h.set_type(request.type());
  h.set_request_id(request.request_id());
  if (request.has_table()) h.set_table(request.table());
  h.set_status_code(static_cast<int>(status.code()));
  if (!status.ok()) h.set_error(std::string(status.message()));
  return h;
}

absl::Status ReplyStatus(const Header& reply) {
  const int code = reply.status_code();
  if (code == 0) return absl::OkStatus();
  // A code outside absl's range (a damaged or foreign reply) is reported as Unknown.
  const auto status_code = code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown;
  return absl::Status(status_code, reply.error().empty() ? std::string("error reply without text") : reply.error());
}

}  // namespace t2d::ps
