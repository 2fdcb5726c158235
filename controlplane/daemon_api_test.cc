// vfio-userd's gRPC API against the real daemon binary (a child process):
// health, reflection, idempotent create, every invalid request's status
// code, limits, pagination, delete, socket permissions, device actions,
// shutdown, the embedded default and the config file, dense mode.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "controlplane/daemon_test_util.h"
#include "core/transport.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/integration/raw_client.h"

namespace vfio_user::controlplane::testing {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsSupersetOf;
using ::vfio_user::testing::RawClient;

namespace reflection = ::grpc::reflection::v1alpha;

constexpr uint32_t kIdioBar = 2;

bool IsSocket(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

std::unique_ptr<RawClient> Attach(const std::string& path) {
  auto client = RawClient::Connect(path);
  if (!client.ok()) {
    ADD_FAILURE() << client.status();
    return nullptr;
  }
  auto version = (*client)->Negotiate();
  if (!version.ok()) {
    ADD_FAILURE() << version.status();
    return nullptr;
  }
  return std::move(*client);
}

class DaemonApiTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start().ok()); }

  std::string StateFile(const std::string& name) {
    return absl::StrCat(daemon_.state_dir(), "/devices/", name, ".textproto");
  }

  Daemon daemon_;
};

TEST_F(DaemonApiTest, HealthReportsServing) {
  auto health = grpc::health::v1::Health::NewStub(daemon_.channel());
  for (const std::string service : {"", "vfio_user.v1.DeviceService"}) {
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    auto context = Context();
    ASSERT_TRUE(health->Check(context.get(), request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

TEST_F(DaemonApiTest, GrpcSocketIsOwnerOnly) {
  struct stat st;
  ASSERT_EQ(::lstat(daemon_.grpc_socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// The reflection client a tool like grpcurl is: list the services, then
// fetch and load every file descriptor needed to describe them.
class ReflectionClient {
 public:
  explicit ReflectionClient(std::shared_ptr<grpc::Channel> channel)
      : stub_(reflection::ServerReflection::NewStub(channel)),
        context_(Context()),
        stream_(stub_->ServerReflectionInfo(context_.get())) {}

  std::vector<std::string> ListServices() {
    reflection::ServerReflectionRequest request;
    request.set_list_services("");
    reflection::ServerReflectionResponse response;
    std::vector<std::string> out;
    if (!stream_->Write(request) || !stream_->Read(&response)) return out;
    for (const auto& s : response.list_services_response().service()) out.push_back(s.name());
    return out;
  }

  // Loads the file defining `symbol` and everything it imports into pool_,
  // fetching by file name whatever the server did not send along (as
  // grpcurl does). Only what the server sends is used: pool_ has no
  // fallback to this binary's own descriptors.
  bool LoadSymbol(const std::string& symbol) {
    reflection::ServerReflectionRequest request;
    request.set_file_containing_symbol(symbol);
    std::vector<google::protobuf::FileDescriptorProto> pending;
    if (!Fetch(request, &pending)) return false;
    for (int round = 0; round < 16 && !pending.empty(); ++round) {
      // Dependencies may come in any order: add what can be built.
      for (bool progress = true; progress;) {
        progress = false;
        for (auto it = pending.begin(); it != pending.end();) {
          if (pool_.FindFileByName(it->name()) != nullptr) {
            it = pending.erase(it);
            continue;
          }
          bool ready = true;
          for (const std::string& dep : it->dependency()) {
            if (pool_.FindFileByName(dep) == nullptr) ready = false;
          }
          if (ready && pool_.BuildFile(*it) == nullptr) return false;
          if (ready) {
            it = pending.erase(it);
            progress = true;
          } else {
            ++it;
          }
        }
      }
      // Ask for imports nobody sent.
      std::set<std::string> missing;
      for (const auto& file : pending) {
        for (const std::string& dep : file.dependency()) {
          bool queued = false;
          for (const auto& p : pending) queued = queued || p.name() == dep;
          if (!queued && pool_.FindFileByName(dep) == nullptr) missing.insert(dep);
        }
      }
      for (const std::string& name : missing) {
        reflection::ServerReflectionRequest by_name;
        by_name.set_file_by_filename(name);
        if (!Fetch(by_name, &pending)) return false;
      }
    }
    return pending.empty();
  }

  const google::protobuf::DescriptorPool& pool() const { return pool_; }

 private:
  std::unique_ptr<reflection::ServerReflection::Stub> stub_;
  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<reflection::ServerReflectionRequest,
                                           reflection::ServerReflectionResponse>>
      stream_;
  bool Fetch(const reflection::ServerReflectionRequest& request,
             std::vector<google::protobuf::FileDescriptorProto>* files) {
    reflection::ServerReflectionResponse response;
    if (!stream_->Write(request) || !stream_->Read(&response)) return false;
    if (response.has_error_response()) {
      ADD_FAILURE() << request.ShortDebugString() << ": "
                    << response.error_response().error_message();
      return false;
    }
    for (const std::string& bytes : response.file_descriptor_response().file_descriptor_proto()) {
      google::protobuf::FileDescriptorProto file;
      if (!file.ParseFromString(bytes)) return false;
      files->push_back(std::move(file));
    }
    return true;
  }

  google::protobuf::DescriptorPool pool_;
};

TEST_F(DaemonApiTest, ReflectionListsAndDescribesTheServices) {
  ReflectionClient client(daemon_.channel());
  EXPECT_THAT(client.ListServices(),
              IsSupersetOf({"vfio_user.v1.DeviceService", "grpc.health.v1.Health",
                            "grpc.reflection.v1alpha.ServerReflection"}));

  ASSERT_TRUE(client.LoadSymbol("vfio_user.v1.DeviceService"));
  const auto* service = client.pool().FindServiceByName("vfio_user.v1.DeviceService");
  ASSERT_NE(service, nullptr);
  std::set<std::string> methods;
  for (int i = 0; i < service->method_count(); ++i) methods.insert(service->method(i)->name());
  EXPECT_THAT(methods, IsSupersetOf({"CreateDevice", "GetDevice", "ListDevices", "ResetDevice",
                                     "DeleteDevice", "WatchDevices", "SetIdio16Inputs"}));
  const auto* watch = service->FindMethodByName("WatchDevices");
  ASSERT_NE(watch, nullptr);
  EXPECT_TRUE(watch->server_streaming());
  // Enough to build requests: the spec with its typed oneof.
  const auto* spec = client.pool().FindMessageTypeByName("vfio_user.v1.DeviceSpec");
  ASSERT_NE(spec, nullptr);
  const auto* type = spec->FindOneofByName("type");
  ASSERT_NE(type, nullptr);
  EXPECT_NE(spec->FindFieldByName("idio16"), nullptr);
  EXPECT_NE(spec->FindFieldByName("dma_test"), nullptr);
  const auto* state = client.pool().FindEnumTypeByName("vfio_user.v1.DeviceState");
  ASSERT_NE(state, nullptr);
  EXPECT_NE(state->FindValueByName("DEVICE_STATE_CLIENT_GONE_WAITING"), nullptr);

  // The health service is describable too (its descriptors are linked in).
  ASSERT_TRUE(client.LoadSymbol("grpc.health.v1.Health"));
  EXPECT_NE(client.pool().FindServiceByName("grpc.health.v1.Health"), nullptr);
}

TEST_F(DaemonApiTest, CreateIsIdempotentByName) {
  const std::string path = daemon_.DeviceSocket("gpio");
  v1::Device first;
  ASSERT_TRUE(daemon_.Create(Idio16Spec("gpio", path), &first).ok());
  EXPECT_EQ(first.spec().socket().mode(), "0600");  // defaults filled in
  EXPECT_EQ(first.spec().timeout_policy(), v1::TIMEOUT_POLICY_KEEP_STATE);
  EXPECT_TRUE(IsSocket(path));
  EXPECT_TRUE(Exists(StateFile("gpio")));

  // The same spec again, defaults spelled out or not: success, same device.
  v1::DeviceSpec explicit_defaults = Idio16Spec("gpio", path);
  explicit_defaults.mutable_socket()->set_mode("600");
  explicit_defaults.set_timeout_policy(v1::TIMEOUT_POLICY_KEEP_STATE);
  v1::Device again;
  ASSERT_TRUE(daemon_.Create(explicit_defaults, &again).ok());
  EXPECT_EQ(again.status().create_time().seconds(), first.status().create_time().seconds());
  EXPECT_EQ(again.status().create_time().nanos(), first.status().create_time().nanos());

  // A different spec under the same name.
  grpc::Status conflict = daemon_.Create(DmaTestSpec("gpio", path));
  EXPECT_EQ(conflict.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(conflict.error_message(), HasSubstr("spec.name"));

  // Type-specific state arrives with the worker's first report.
  auto got = daemon_.WaitFor("gpio", [](const v1::Device& d) {
    return d.status().state() == v1::DEVICE_STATE_LISTENING && d.status().has_idio16();
  });
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_GT(got->status().worker_pid(), 0);
}

struct BadSpec {
  std::string what;
  std::function<void(v1::DeviceSpec*)> mutate;
  grpc::StatusCode code;
  std::string field;
};

TEST_F(DaemonApiTest, InvalidCreateRequestsGetTheRightCode) {
  // A symlinked directory, a regular file, a live socket of someone else.
  const std::string tmp = ::getenv("TEST_TMPDIR") ? ::getenv("TEST_TMPDIR") : "/tmp";
  const std::string link = TempSocketPath("lnk");
  ASSERT_EQ(::symlink(tmp.c_str(), link.c_str()), 0);
  const std::string file = TempSocketPath("file");
  { std::ofstream(file) << "not a socket"; }
  const std::string foreign = TempSocketPath("foreign");
  auto foreign_listener = ListenUnix(foreign);
  ASSERT_TRUE(foreign_listener.ok());
  const std::string taken = daemon_.DeviceSocket("taken");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("first", taken)).ok());

  using C = grpc::StatusCode;
  const std::vector<BadSpec> cases = {
      {"no name", [](v1::DeviceSpec* s) { s->clear_name(); }, C::INVALID_ARGUMENT, "spec.name"},
      {"bad characters", [](v1::DeviceSpec* s) { s->set_name("Bad Name"); },
       C::INVALID_ARGUMENT, "spec.name"},
      {"name too long", [](v1::DeviceSpec* s) { s->set_name(std::string(64, 'a')); },
       C::INVALID_ARGUMENT, "spec.name"},
      {"no type", [](v1::DeviceSpec* s) { s->clear_type(); }, C::INVALID_ARGUMENT, "spec.type"},
      {"no socket path", [](v1::DeviceSpec* s) { s->mutable_socket()->clear_path(); },
       C::INVALID_ARGUMENT, "spec.socket.path"},
      {"relative path", [](v1::DeviceSpec* s) { s->mutable_socket()->set_path("x.sock"); },
       C::INVALID_ARGUMENT, "spec.socket.path"},
      {"dot-dot", [](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/tmp/../x.sock"); },
       C::INVALID_ARGUMENT, "spec.socket.path"},
      {"path too long",
       [](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/tmp/" + std::string(103, 'x')); },
       C::INVALID_ARGUMENT, "spec.socket.path"},
      {"symlink component",
       [&](v1::DeviceSpec* s) { s->mutable_socket()->set_path(link + "/x.sock"); },
       C::INVALID_ARGUMENT, "spec.socket.path"},
      {"missing directory",
       [](v1::DeviceSpec* s) { s->mutable_socket()->set_path("/nonexistent-dir/x.sock"); },
       C::FAILED_PRECONDITION, "spec.socket.path"},
      {"regular file there", [&](v1::DeviceSpec* s) { s->mutable_socket()->set_path(file); },
       C::FAILED_PRECONDITION, "spec.socket.path"},
      {"someone listens there", [&](v1::DeviceSpec* s) { s->mutable_socket()->set_path(foreign); },
       C::FAILED_PRECONDITION, "spec.socket.path"},
      {"path of another device", [&](v1::DeviceSpec* s) { s->mutable_socket()->set_path(taken); },
       C::ALREADY_EXISTS, "spec.socket.path"},
      {"mode not octal", [](v1::DeviceSpec* s) { s->mutable_socket()->set_mode("0999"); },
       C::INVALID_ARGUMENT, "spec.socket.mode"},
      {"setuid mode", [](v1::DeviceSpec* s) { s->mutable_socket()->set_mode("4777"); },
       C::INVALID_ARGUMENT, "spec.socket.mode"},
      {"unknown owner",
       [](v1::DeviceSpec* s) { s->mutable_socket()->set_owner("no-such-user-vfud"); },
       C::INVALID_ARGUMENT, "spec.socket.owner"},
      {"unknown group",
       [](v1::DeviceSpec* s) { s->mutable_socket()->set_group("no-such-group-vfud"); },
       C::INVALID_ARGUMENT, "spec.socket.group"},
      {"negative window", [](v1::DeviceSpec* s) { s->mutable_reconnect_window()->set_seconds(-1); },
       C::INVALID_ARGUMENT, "spec.reconnect_window"},
      {"window too long",
       [](v1::DeviceSpec* s) { s->mutable_reconnect_window()->set_seconds(25 * 3600); },
       C::INVALID_ARGUMENT, "spec.reconnect_window"},
      {"unknown policy",
       [](v1::DeviceSpec* s) { s->set_timeout_policy(static_cast<v1::TimeoutPolicy>(99)); },
       C::INVALID_ARGUMENT, "spec.timeout_policy"},
      {"idio16 inputs", [](v1::DeviceSpec* s) { s->mutable_idio16()->set_initial_inputs(0x10000); },
       C::INVALID_ARGUMENT, "spec.idio16.initial_inputs"},
      {"dma maps", [](v1::DeviceSpec* s) { s->mutable_dma_test()->set_max_dma_maps(1 << 20); },
       C::INVALID_ARGUMENT, "spec.dma_test.max_dma_maps"},
  };
  for (const BadSpec& c : cases) {
    v1::DeviceSpec spec = Idio16Spec("bad", daemon_.DeviceSocket("bad"));
    c.mutate(&spec);
    grpc::Status st = daemon_.Create(spec);
    EXPECT_EQ(st.error_code(), c.code) << c.what << ": " << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(c.field)) << c.what;
  }
  // Nothing was created, persisted or left on disk by the failures.
  EXPECT_FALSE(Exists(daemon_.DeviceSocket("bad")));
  EXPECT_FALSE(Exists(StateFile("bad")));
  std::ifstream still_file(file);
  std::string content;
  std::getline(still_file, content);
  EXPECT_EQ(content, "not a socket");
  EXPECT_TRUE(IsSocket(foreign));
  v1::ListDevicesRequest list;
  v1::ListDevicesResponse listed;
  auto context = Context();
  ASSERT_TRUE(daemon_.stub().ListDevices(context.get(), list, &listed).ok());
  EXPECT_EQ(listed.total_size(), 1);
  ::unlink(link.c_str());
  ::unlink(file.c_str());
  ::unlink(foreign.c_str());
}

TEST_F(DaemonApiTest, InvalidOtherRequestsGetTheRightCode) {
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("dma", daemon_.DeviceSocket("dma"))).ok());
  ASSERT_TRUE(daemon_.WaitForState("dma", v1::DEVICE_STATE_LISTENING).ok());
  auto& stub = daemon_.stub();
  using C = grpc::StatusCode;
  auto expect = [](const grpc::Status& st, C code, const std::string& text) {
    EXPECT_EQ(st.error_code(), code) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(text));
  };
  {
    v1::GetDeviceRequest r;
    v1::Device d;
    expect(stub.GetDevice(Context().get(), r, &d), C::INVALID_ARGUMENT, "name");
    r.set_name("nope");
    expect(stub.GetDevice(Context().get(), r, &d), C::NOT_FOUND, "nope");
  }
  {
    v1::DeleteDeviceRequest r;
    v1::DeleteDeviceResponse d;
    r.set_name("nope");
    expect(stub.DeleteDevice(Context().get(), r, &d), C::NOT_FOUND, "nope");
    r.set_allow_missing(true);
    EXPECT_TRUE(stub.DeleteDevice(Context().get(), r, &d).ok());
  }
  {
    v1::ResetDeviceRequest r;
    v1::Device d;
    r.set_name("nope");
    expect(stub.ResetDevice(Context().get(), r, &d), C::NOT_FOUND, "nope");
  }
  {
    v1::SetIdio16InputsRequest r;
    v1::Idio16State s;
    r.set_name("dma");
    expect(stub.SetIdio16Inputs(Context().get(), r, &s), C::FAILED_PRECONDITION, "dma_test");
    r.set_inputs(0x10000);
    expect(stub.SetIdio16Inputs(Context().get(), r, &s), C::INVALID_ARGUMENT, "inputs");
    r.set_inputs(1);
    r.set_mask(0x10000);
    expect(stub.SetIdio16Inputs(Context().get(), r, &s), C::INVALID_ARGUMENT, "mask");
    r.set_name("nope");
    r.clear_mask();
    expect(stub.SetIdio16Inputs(Context().get(), r, &s), C::NOT_FOUND, "nope");
  }
  {
    v1::ListDevicesRequest r;
    v1::ListDevicesResponse l;
    r.set_page_size(-1);
    expect(stub.ListDevices(Context().get(), r, &l), C::INVALID_ARGUMENT, "page_size");
    r.set_page_size(0);
    r.set_page_token("garbage!");
    expect(stub.ListDevices(Context().get(), r, &l), C::INVALID_ARGUMENT, "page_token");
  }
  {
    auto watch_status = [&](uint64_t since, const std::string& name) {
      v1::WatchDevicesRequest r;
      r.set_since_revision(since);
      r.set_name(name);
      auto context = Context();
      auto reader = stub.WatchDevices(context.get(), r);
      v1::DeviceEvent e;
      while (reader->Read(&e)) {
      }
      return reader->Finish();
    };
    expect(watch_status(~uint64_t{0}, ""), C::INVALID_ARGUMENT, "since_revision");
    expect(watch_status(1, ""), C::FAILED_PRECONDITION, "since_revision");
    expect(watch_status(0, "Not A Name"), C::INVALID_ARGUMENT, "name");
  }
  {
    // Larger than --grpc_max_message_bytes (64 KiB by default).
    v1::DeviceSpec huge = Idio16Spec(std::string(100 * 1024, 'a'), daemon_.DeviceSocket("huge"));
    grpc::Status st = daemon_.Create(huge);
    EXPECT_EQ(st.error_code(), C::RESOURCE_EXHAUSTED) << st.error_message();
  }
}

// vfio-userctl, the bundled grpcurl alternative: JSON in, exit codes out.
TEST_F(DaemonApiTest, VfioUserctlDrivesTheDaemon) {
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {::vfio_user::testing::RunfilePath("controlplane/vfio-userctl"),
                               absl::StrCat("--grpc=unix:", daemon_.grpc_socket())});
    auto process = ::vfio_user::testing::Subprocess::Start(args);
    if (!process.ok()) return -1;
    auto status = process->Stop(0, absl::Seconds(20));  // signal 0: just wait
    return status.ok() && WIFEXITED(*status) ? WEXITSTATUS(*status) : -1;
  };
  const std::string path = daemon_.DeviceSocket("ctl");
  EXPECT_EQ(ctl({"create", absl::StrCat(R"({"name":"ctl","idio16":{"initialInputs":3},)",
                                        R"("socket":{"path":")", path, R"("},)",
                                        R"("reconnectWindow":"2.5s"})")}),
            0);
  auto device = daemon_.Get("ctl");
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->spec().idio16().initial_inputs(), 3u);
  EXPECT_EQ(device->spec().reconnect_window().nanos(), 500000000);
  EXPECT_EQ(ctl({"get", "ctl"}), 0);
  EXPECT_EQ(ctl({"list"}), 0);
  EXPECT_EQ(ctl({"health"}), 0);
  EXPECT_EQ(ctl({"set-inputs", "ctl", "0x00f0", "0x00ff"}), 0);
  EXPECT_TRUE(daemon_.WaitFor("ctl", [](const v1::Device& d) {
                       return d.status().idio16().inputs() == 0xf0;
                     }).ok());
  EXPECT_EQ(ctl({"reset", "ctl"}), 0);
  EXPECT_EQ(ctl({"get", "nope"}), 2);          // NOT_FOUND
  EXPECT_EQ(ctl({"create", R"({"name":"Bad"})"}), 2);  // INVALID_ARGUMENT
  EXPECT_EQ(ctl({"create", "not json"}), 1);  // usage
  EXPECT_EQ(ctl({"delete", "ctl"}), 0);
  EXPECT_EQ(ctl({"delete", "ctl", "--allow_missing"}), 0);
  EXPECT_FALSE(Exists(path));
}

TEST(DaemonLimitsTest, DeviceCountLimit) {
  Daemon daemon("lim");
  ASSERT_TRUE(daemon.Start({"--max_devices=2"}).ok());
  ASSERT_TRUE(daemon.Create(Idio16Spec("a", daemon.DeviceSocket("a"))).ok());
  ASSERT_TRUE(daemon.Create(DmaTestSpec("b", daemon.DeviceSocket("b"))).ok());
  grpc::Status st = daemon.Create(Idio16Spec("c", daemon.DeviceSocket("c")));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("--max_devices"));
  // Idempotent re-creation of an existing device is not a new device.
  EXPECT_TRUE(daemon.Create(Idio16Spec("a", daemon.DeviceSocket("a"))).ok());
  EXPECT_FALSE(Exists(daemon.DeviceSocket("c")));
}

TEST(DaemonLimitsTest, AllowedSocketDir) {
  Daemon daemon("ald");
  const std::string allowed = TempSocketPath("allowed");
  ASSERT_EQ(::mkdir(allowed.c_str(), 0700), 0);
  ASSERT_TRUE(daemon.Start({absl::StrCat("--allowed_socket_dir=", allowed)}).ok());
  grpc::Status outside = daemon.Create(Idio16Spec("out", daemon.DeviceSocket("out")));
  EXPECT_EQ(outside.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(outside.error_message(), AllOf(HasSubstr("spec.socket.path"), HasSubstr(allowed)));
  EXPECT_TRUE(daemon.Create(Idio16Spec("in", allowed + "/in.sock")).ok());
  EXPECT_TRUE(IsSocket(allowed + "/in.sock"));
  ASSERT_TRUE(daemon.Delete("in").ok());
  ::rmdir(allowed.c_str());
}

TEST_F(DaemonApiTest, ListPaginates) {
  const std::vector<std::string> names = {"e", "a", "d", "b", "c"};
  for (const std::string& n : names) {
    ASSERT_TRUE(daemon_.Create(Idio16Spec(n, daemon_.DeviceSocket(n))).ok()) << n;
  }
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    v1::ListDevicesRequest request;
    request.set_page_size(2);
    request.set_page_token(token);
    v1::ListDevicesResponse response;
    auto context = Context();
    ASSERT_TRUE(daemon_.stub().ListDevices(context.get(), request, &response).ok());
    EXPECT_EQ(response.total_size(), 5);
    EXPECT_GT(response.revision(), 0u);
    EXPECT_LE(response.devices_size(), 2);
    for (const auto& d : response.devices()) seen.push_back(d.spec().name());
    token = response.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"a", "b", "c", "d", "e"}));
}

TEST_F(DaemonApiTest, DeleteRemovesSocketStateAndWorker) {
  const std::string path = daemon_.DeviceSocket("gone");
  ASSERT_TRUE(daemon_.Create(DmaTestSpec("gone", path)).ok());
  auto device = daemon_.WaitFor("gone", [](const v1::Device& d) {
    return d.status().worker_pid() > 0 && d.status().state() == v1::DEVICE_STATE_LISTENING;
  });
  ASSERT_TRUE(device.ok()) << device.status();
  const pid_t worker = device->status().worker_pid();
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);

  ASSERT_TRUE(daemon_.Delete("gone").ok());
  EXPECT_FALSE(Exists(path));
  EXPECT_FALSE(Exists(StateFile("gone")));
  EXPECT_EQ(daemon_.Get("gone").status().code(), absl::StatusCode::kNotFound);
  // The client was told by a disconnect; the worker is gone.
  EXPECT_FALSE(client->Receive().ok());
  EXPECT_TRUE(Eventually([&] { return ::kill(worker, 0) != 0; }));
  EXPECT_EQ(daemon_.Delete("gone").error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DaemonApiTest, SocketOwnerGroupAndModeAreApplied) {
  const std::string path = daemon_.DeviceSocket("perm");
  v1::DeviceSpec spec = Idio16Spec("perm", path);
  spec.mutable_socket()->set_mode("0660");
  spec.mutable_socket()->set_owner(absl::StrCat(::getuid()));
  spec.mutable_socket()->set_group(absl::StrCat(::getgid()));
  ASSERT_TRUE(daemon_.Create(spec).ok());
  struct stat st;
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_uid, ::getuid());
  EXPECT_EQ(st.st_gid, ::getgid());
}

TEST_F(DaemonApiTest, SetIdio16InputsDrivesTheLines) {
  const std::string path = daemon_.DeviceSocket("gpio");
  v1::DeviceSpec spec = Idio16Spec("gpio", path);
  spec.mutable_idio16()->set_initial_inputs(0x0101);
  ASSERT_TRUE(daemon_.Create(spec).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  auto low = client->RegionRead(kIdioBar, 1, 1);
  ASSERT_TRUE(low.ok()) << low.status();
  EXPECT_EQ((*low)[0], 0x01);

  v1::SetIdio16InputsRequest request;
  request.set_name("gpio");
  request.set_inputs(0x1234);
  v1::Idio16State state;
  auto context = Context();
  ASSERT_TRUE(daemon_.stub().SetIdio16Inputs(context.get(), request, &state).ok());
  EXPECT_EQ(state.inputs(), 0x1234u);
  EXPECT_EQ((*client->RegionRead(kIdioBar, 1, 1))[0], 0x34);
  EXPECT_EQ((*client->RegionRead(kIdioBar, 5, 1))[0], 0x12);

  // Only the masked lines change.
  request.set_inputs(0xffff);
  request.set_mask(0x000f);
  context = Context();
  ASSERT_TRUE(daemon_.stub().SetIdio16Inputs(context.get(), request, &state).ok());
  EXPECT_EQ(state.inputs(), 0x123fu);

  // The guest's outputs show up in the status.
  ASSERT_TRUE(client->RegionWrite(kIdioBar, 0, {0xa5}).ok());
  auto shown = daemon_.WaitFor("gpio", [](const v1::Device& d) {
    return d.status().idio16().outputs() == 0xa5 && d.status().idio16().inputs() == 0x123f;
  });
  EXPECT_TRUE(shown.ok()) << shown.status();
}

TEST_F(DaemonApiTest, SigtermShutsDownCleanly) {
  const std::string path = daemon_.DeviceSocket("s");
  ASSERT_TRUE(daemon_.Create(Idio16Spec("s", path)).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  auto status = daemon_.Stop(SIGTERM);
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_FALSE(Exists(path));                  // device socket removed
  EXPECT_FALSE(Exists(daemon_.grpc_socket()));  // gRPC socket removed
  EXPECT_FALSE(client->Receive().ok());         // the client was disconnected
  EXPECT_TRUE(Exists(StateFile("s")));          // the spec stays for the next start
}

TEST(DaemonConfigTest, EmbeddedDefaultDevices) {
  Daemon daemon("def");
  ASSERT_TRUE(daemon.Start({"--default_devices=true"}).ok());
  for (const std::string name : {"idio16-0", "dma-test-0"}) {
    auto device = daemon.WaitForState(name, v1::DEVICE_STATE_LISTENING);
    ASSERT_TRUE(device.ok()) << name << ": " << device.status();
    EXPECT_EQ(device->spec().socket().path(),
              absl::StrCat(daemon.runtime_dir(), "/", name, ".sock"));
    EXPECT_TRUE(IsSocket(device->spec().socket().path()));
  }
  EXPECT_EQ(daemon.Get("idio16-0")->spec().type_case(), v1::DeviceSpec::kIdio16);
  EXPECT_EQ(daemon.Get("dma-test-0")->spec().type_case(), v1::DeviceSpec::kDmaTest);
  auto client = Attach(absl::StrCat(daemon.runtime_dir(), "/idio16-0.sock"));
  EXPECT_NE(client, nullptr);
}

TEST(DaemonConfigTest, ConfigFileDevices) {
  Daemon daemon("cfg");
  const std::string socket = daemon.DeviceSocket("from-config");
  const std::string config = TempSocketPath("config") + ".textproto";
  {
    std::ofstream out(config);
    out << "device {\n  name: \"from-config\"\n  idio16 { initial_inputs: 7 }\n"
        << "  socket { path: \"" << socket << "\" mode: \"0640\" }\n"
        << "  reconnect_window { seconds: 5 }\n}\n";
  }
  ASSERT_TRUE(daemon.Start({absl::StrCat("--config=", config)}).ok());
  auto device = daemon.WaitFor("from-config", [](const v1::Device& d) {
    return d.status().state() == v1::DEVICE_STATE_LISTENING && d.status().idio16().inputs() == 7;
  });
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->spec().socket().mode(), "0640");
  EXPECT_EQ(device->spec().reconnect_window().seconds(), 5);
  EXPECT_EQ(daemon.Get("idio16-0").status().code(), absl::StatusCode::kNotFound);
  ::unlink(config.c_str());
}

TEST(DaemonDenseModeTest, DevicesRunInsideTheDaemon) {
  Daemon daemon("dense");
  ASSERT_TRUE(daemon.Start({"--isolation=dense"}).ok());
  const std::string path = daemon.DeviceSocket("gpio");
  ASSERT_TRUE(daemon.Create(Idio16Spec("gpio", path)).ok());
  ASSERT_TRUE(daemon.Create(DmaTestSpec("dma", daemon.DeviceSocket("dma"))).ok());
  auto client = Attach(path);
  ASSERT_NE(client, nullptr);
  auto device = daemon.WaitForState("gpio", v1::DEVICE_STATE_CLIENT_CONNECTED);
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->status().worker_pid(), 0);
  EXPECT_EQ(device->status().client().pid(), ::getpid());
  v1::SetIdio16InputsRequest request;
  request.set_name("gpio");
  request.set_inputs(0x00f0);
  v1::Idio16State state;
  auto context = Context();
  ASSERT_TRUE(daemon.stub().SetIdio16Inputs(context.get(), request, &state).ok());
  EXPECT_EQ((*client->RegionRead(kIdioBar, 1, 1))[0], 0xf0);
  v1::ResetDeviceRequest reset;
  reset.set_name("gpio");
  v1::Device after;
  context = Context();
  EXPECT_TRUE(daemon.stub().ResetDevice(context.get(), reset, &after).ok());
  auto status = daemon.Stop(SIGTERM);
  ASSERT_TRUE(status.ok());
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0);
  EXPECT_FALSE(Exists(path));
}

}  // namespace
}  // namespace vfio_user::controlplane::testing
