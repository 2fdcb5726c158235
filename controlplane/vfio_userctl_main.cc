// vfio-userctl: a small command-line client for vfio-userd, built from the
// C++ stubs (grpcurl is not packaged in Debian). Requests and responses are
// JSON in the proto3 mapping, exactly what grpcurl would print.
//
//   vfio-userctl [--grpc=unix:/run/vfio-userd/grpc.sock] COMMAND ...
//     list                              every device (all pages)
//     get NAME
//     create '{"name":"gpio0","idio16":{},"socket":{"path":"/run/x.sock"}}'
//     create @spec.json                 the DeviceSpec from a file
//     delete NAME [--allow_missing]
//     reset NAME [--disconnect]
//     set-inputs NAME INPUTS [MASK]     idio-16 input lines (0x.. or decimal)
//     watch [SINCE_REVISION] [--name=NAME]
//     health
// Exit status: 0 OK, 1 usage error, 2 the daemon answered with an error
// (printed as CODE: message), 3 cannot reach the daemon.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "controlplane/defaults.h"
#include "google/protobuf/util/json_util.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "proto/vfio_user/v1/device_service.grpc.pb.h"

ABSL_FLAG(std::string, grpc, "",
          "vfio-userd's endpoint (default: the daemon's default, unix:<runtime dir>/grpc.sock).");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(10), "Deadline of each call (not of watch).");
ABSL_FLAG(bool, allow_missing, false, "delete: succeed if there is no such device.");
ABSL_FLAG(bool, disconnect, false, "reset: also disconnect the client.");
ABSL_FLAG(std::string, name, "", "watch: only this device.");

namespace vfio_user::controlplane {
namespace {

namespace v1 = ::vfio_user::v1;

constexpr int kUsage = 1;
constexpr int kRpcError = 2;
constexpr int kUnreachable = 3;

bool IsCtlFlagFile(absl::string_view file) {
  return absl::StrContains(file, "controlplane/vfio_userctl_main");
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "vfio-userctl: %s\n%s\n", why.c_str(),
               absl::ProgramUsageMessage().data());
  return kUsage;
}

void PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  std::fputs(out.c_str(), stdout);
  std::fflush(stdout);
}

int Report(const grpc::Status& status) {
  if (status.ok()) return 0;
  std::fprintf(stderr, "%s: %s\n", absl::StatusCodeToString(
                                       static_cast<absl::StatusCode>(status.error_code()))
                                       .c_str(),
               status.error_message().c_str());
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ? kUnreachable : kRpcError;
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
  return context;
}

bool ParseNumber(const std::string& text, uint32_t* out) {
  if (absl::StartsWithIgnoreCase(text, "0x")) return absl::SimpleHexAtoi(text.substr(2), out);
  return absl::SimpleAtoi(text, out);
}

int Run(const std::vector<std::string>& args) {
  if (args.empty()) return Usage("no command");
  std::string target = absl::GetFlag(FLAGS_grpc);
  if (target.empty()) target = DefaultGrpcListen(DefaultRuntimeDir());
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = v1::DeviceService::NewStub(channel);
  const std::string& command = args[0];
  const size_t n = args.size() - 1;

  if (command == "list" && n == 0) {
    std::string token;
    do {
      v1::ListDevicesRequest request;
      request.set_page_token(token);
      v1::ListDevicesResponse response;
      grpc::Status st = stub->ListDevices(Context().get(), request, &response);
      if (!st.ok()) return Report(st);
      PrintJson(response);
      token = response.next_page_token();
    } while (!token.empty());
    return 0;
  }
  if (command == "get" && n == 1) {
    v1::GetDeviceRequest request;
    request.set_name(args[1]);
    v1::Device device;
    grpc::Status st = stub->GetDevice(Context().get(), request, &device);
    if (st.ok()) PrintJson(device);
    return Report(st);
  }
  if (command == "create" && n == 1) {
    std::string json = args[1];
    if (absl::StartsWith(json, "@")) {
      std::ifstream in(json.substr(1));
      if (!in) return Usage(absl::StrCat("cannot read ", json.substr(1)));
      std::stringstream text;
      text << in.rdbuf();
      json = text.str();
    }
    v1::CreateDeviceRequest request;
    auto parsed = google::protobuf::util::JsonStringToMessage(json, request.mutable_spec());
    if (!parsed.ok()) return Usage(absl::StrCat("not a DeviceSpec: ", parsed.ToString()));
    v1::Device device;
    grpc::Status st = stub->CreateDevice(Context().get(), request, &device);
    if (st.ok()) PrintJson(device);
    return Report(st);
  }
  if (command == "delete" && n == 1) {
    v1::DeleteDeviceRequest request;
    request.set_name(args[1]);
    request.set_allow_missing(absl::GetFlag(FLAGS_allow_missing));
    v1::DeleteDeviceResponse response;
    grpc::Status st = stub->DeleteDevice(Context().get(), request, &response);
    if (st.ok()) PrintJson(response);
    return Report(st);
  }
  if (command == "reset" && n == 1) {
    v1::ResetDeviceRequest request;
    request.set_name(args[1]);
    request.set_disconnect_client(absl::GetFlag(FLAGS_disconnect));
    v1::Device device;
    grpc::Status st = stub->ResetDevice(Context().get(), request, &device);
    if (st.ok()) PrintJson(device);
    return Report(st);
  }
  if (command == "set-inputs" && (n == 2 || n == 3)) {
    v1::SetIdio16InputsRequest request;
    request.set_name(args[1]);
    uint32_t value = 0;
    if (!ParseNumber(args[2], &value)) return Usage("INPUTS: a number (0x1234 or 4660)");
    request.set_inputs(value);
    if (n == 3) {
      if (!ParseNumber(args[3], &value)) return Usage("MASK: a number (0x00ff or 255)");
      request.set_mask(value);
    }
    v1::Idio16State state;
    grpc::Status st = stub->SetIdio16Inputs(Context().get(), request, &state);
    if (st.ok()) PrintJson(state);
    return Report(st);
  }
  if (command == "watch" && n <= 1) {
    v1::WatchDevicesRequest request;
    if (n == 1) {
      uint64_t since = 0;
      if (!absl::SimpleAtoi(args[1], &since)) return Usage("SINCE_REVISION: a number");
      request.set_since_revision(since);
    }
    request.set_name(absl::GetFlag(FLAGS_name));
    grpc::ClientContext context;  // no deadline: runs until interrupted
    auto reader = stub->WatchDevices(&context, request);
    v1::DeviceEvent event;
    while (reader->Read(&event)) PrintJson(event);
    return Report(reader->Finish());
  }
  if (command == "health" && n == 0) {
    auto health = grpc::health::v1::Health::NewStub(channel);
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    grpc::Status st = health->Check(Context().get(), request, &response);
    if (st.ok()) PrintJson(response);
    return Report(st);
  }
  return Usage(absl::StrCat("unknown command or wrong arguments: ", command));
}

}  // namespace
}  // namespace vfio_user::controlplane

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = vfio_user::controlplane::IsCtlFlagFile;
  usage.contains_helpshort_flags = vfio_user::controlplane::IsCtlFlagFile;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "a command-line client for vfio-userd.\n"
      "  vfio-userctl [--grpc=unix:/path] COMMAND ...\n"
      "  list | get NAME | create JSON|@FILE | delete NAME [--allow_missing]\n"
      "  reset NAME [--disconnect] | set-inputs NAME INPUTS [MASK]\n"
      "  watch [SINCE_REVISION] [--name=NAME] | health\n"
      "JSON in the proto3 mapping of vfio_user.v1 (docs/CONTROLPLANE.md).");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> args(positional.begin() + 1, positional.end());
  return vfio_user::controlplane::Run(args);
}
