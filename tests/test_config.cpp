// labels: cpu
#include "engine/config.h"
#include "engine/error.h"
#include "testing.h"

using namespace mira;

TEST_CASE("config: defaults, merge, overrides, errors naming the key") {
  Json defaults = Json::parse(R"({"optim": {"lr": 0.3, "name": "lars", "epochs": 100}, "seed": 0, "out": null,
                                  "crops": [224, 96]})");
  Json cfg = merge_config(defaults, Json::parse(R"({"optim": {"lr": 1}})"), "file.json");
  CHECK(cfg["optim"]["lr"] == 1);
  CHECK(cfg["optim"]["name"] == "lars");
  apply_overrides(cfg, defaults, {"optim.lr=0.5", "optim.name=sgd", "seed=3", "out=\"runs/a\"", "crops=[32]"});
  CHECK(cfg["optim"]["lr"] == 0.5);
  CHECK(cfg["optim"]["name"] == "sgd");
  CHECK(cfg["seed"] == 3);
  CHECK(cfg["out"] == "runs/a");
  CHECK(cfg["crops"] == Json::parse("[32]"));
  auto message = [&](auto fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(message([&] { merge_config(defaults, Json::parse(R"({"optim": {"lrr": 1}})"), "f.json"); })
            .find("unknown configuration key 'optim.lrr'") != std::string::npos);
  CHECK(message([&] { merge_config(defaults, Json::parse(R"({"optim": {"lr": "fast"}})"), "f.json"); })
            .find("'optim.lr' must be a number") != std::string::npos);
  CHECK(message([&] { merge_config(defaults, Json::parse(R"({"optim": {"epochs": 1.5}})"), "f.json"); })
            .find("optim.epochs") != std::string::npos);
  CHECK(message([&] { merge_config(defaults, Json::parse(R"({"optim": 3})"), "f.json"); }).find("optim") !=
        std::string::npos);
  CHECK(message([&] { apply_overrides(cfg, defaults, {"nokey=1"}); }).find("unknown configuration key 'nokey'") !=
        std::string::npos);
  CHECK(message([&] { apply_overrides(cfg, defaults, {"optim.lr"}); }).find("expected key.path=value") != std::string::npos);
  CHECK(message([&] { read_json_file("/nonexistent/x.json"); }).find("/nonexistent/x.json") != std::string::npos);
}
