// libFuzzer target: GenerateRequest bytes, as gRPC hands them to the service, through the validation both doors run
// (server/request_validation.h). A request passes with every field inside its bound, or is refused with
// INVALID_ARGUMENT and a short, printable message; anything else (a crash, a sanitizer report, another exception,
// a property below) is a bug.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <google/protobuf/stubs/logging.h>

#include "quantserve/v1/inference.pb.h"
#include "server/config.h"
#include "server/request_validation.h"
#include "validation_properties.h"

// libprotobuf logs a line for every string field that is not UTF-8 (a parse failure the fuzzer hits constantly).
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  quantserve::v1::GenerateRequest request;
  // Bytes protobuf cannot parse never reach the service (server/undecodable_request.h answers them).
  if (!request.ParseFromArray(data, int(size))) return 0;
  qs::fuzz::check_validation(request, /*json_space_after_separators=*/size % 2 == 0);
  return 0;
}
